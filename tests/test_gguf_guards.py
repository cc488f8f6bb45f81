"""GGUF guards: a served file changed under the backend, settings the export cannot carry, the tokenizer's
normalizer, and `so8t export`'s refusals that must leave --out as it was."""

import shutil

import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from so8t_lib.core.config import ModelConfig  # noqa: E402
from so8t_lib.export.gguf_meta import GGUFError  # noqa: E402
from so8t_lib.export.quantize import export  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.perturb import perturb_adapters  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402

REQUESTS = ["経費精算の締め日はいつですか", "How do I reset my password?"]


def _checkpoint(root, tokenizer, seed: int, **config):
    """A tiny model with trained-looking adapters and head statistics, saved as a checkpoint."""
    torch.manual_seed(seed)
    model = SO8TModel.from_config(ModelConfig(name="so8t-guard", **config), tokenizer)
    perturb_adapters(model, scale=0.3, seed=seed)
    model.train()
    model.safety_head(torch.randn(64, model.causal_lm.config.hidden_size) * 2 + 1)
    return model.save(root / f"ckpt-{seed}")


@pytest.fixture(scope="module")
def two_exports(tmp_path_factory, tokenizer):
    """Two checkpoints of one shape, each exported to f32 (files of the same size, other weights)."""
    root = tmp_path_factory.mktemp("guards")
    out = {}
    for seed in (0, 1):
        ckpt = _checkpoint(root, tokenizer, seed)
        (f32,) = [p for p in export(ckpt, root / f"dist-{seed}", [], f32=True, progress=False) if "f32" in p.name]
        out[seed] = (ckpt, f32)
    return out


def _served_copy(source, folder):
    """A copy of an exported file and its sidecar, as a gate would serve it."""
    served = folder / "served.gguf"
    shutil.copy(source, served)
    shutil.copy(f"{source}.sha256", f"{served}.sha256")
    return served


def test_a_served_file_written_over_in_place_stops_decisions_and_answers(two_exports, tmp_path):
    """`cp new.gguf served.gguf` keeps the inode llama.cpp has mapped: decisions silently followed the new weights
    while the head and model_version stayed the old file's. Every pass and answer now checks the file first."""
    (_, first), (_, second) = two_exports[0], two_exports[1]
    assert first.stat().st_size == second.stat().st_size  # an overwrite the size alone would not show
    served = _served_copy(first, tmp_path)
    backend = GGUFBackend(served)
    backend.decide(REQUESTS)
    answer = backend.start_answer(REQUESTS[0], max_tokens=8)
    inode = served.stat().st_ino
    with open(served, "r+b") as handle:  # in place, as cp does: same inode, same size
        handle.write(second.read_bytes())
    assert served.stat().st_ino == inode
    for step in (lambda: backend.decide(REQUESTS), lambda: backend.decision_states(REQUESTS),
                 lambda: backend.hidden_states([backend.format_prompt(REQUESTS[0])]),
                 lambda: backend.start_answer(REQUESTS[0]), lambda: answer.advance(2),
                 lambda: backend.generate(REQUESTS[0], max_tokens=4)):
        with pytest.raises(GGUFError, match="changed on disk.*replace served files by rename"):
            step()
