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


def _checkpoint(root, tokenizer, seed: int, name: str = "so8t-guard", **config):
    """A tiny model with trained-looking adapters and head statistics, saved as a checkpoint."""
    torch.manual_seed(seed)
    model = SO8TModel.from_config(ModelConfig(name=name, **config), tokenizer)
    perturb_adapters(model, scale=0.3, seed=seed)
    if not model.safety_head.pools_tokens:  # standardiser statistics (a max head reads token states)
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
        with pytest.raises(GGUFError, match="written over in place.*replace served files by rename"):
            step()


def test_a_served_file_replaced_by_rename_goes_on_deciding_from_the_file_it_loaded(two_exports, tmp_path):
    """A rename (so8t export, retrain deploy) leaves the mapped inode as it was: decisions stay those of the file
    the head and model_version belong to until a restart; only a new answer context, which would open the path
    anew, is refused."""
    (_, first), (_, second) = two_exports[0], two_exports[1]
    served = _served_copy(first, tmp_path)
    backend = GGUFBackend(served)
    before = backend.decide(REQUESTS)
    staged = tmp_path / "staged.gguf"
    staged.write_bytes(second.read_bytes())
    staged.replace(served)  # another inode at the served path
    torch.testing.assert_close(backend.decide(REQUESTS), before)
    with pytest.raises(GGUFError, match="was replaced since the gate loaded it"):
        backend.start_answer(REQUESTS[0], max_tokens=4)


@pytest.mark.parametrize("rope", [{"rope_type": "linear", "factor": 4.0},
                                  {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}])
def test_a_scaled_rope_is_refused_at_export_by_name(rope, tokenizer, tmp_path):
    """Only rope_theta was written: a linear or yarn base exported unscaled, and its f32 file computed another
    model (state cosine about -0.2)."""
    from so8t_lib.export.gguf_writer import write_gguf

    model = SO8TModel.from_config(ModelConfig(name="so8t-guard"), tokenizer)
    model.causal_lm.config.rope_parameters = {"rope_theta": 1e6, **rope}
    with pytest.raises(GGUFError, match=f"rope_parameters has rope_type '{rope['rope_type']}'.*unscaled"):
        write_gguf(model, tmp_path / "scaled.gguf", "f32")
    assert not list(tmp_path.iterdir())


def test_a_gemma3_sliding_rope_base_llama_cpp_does_not_use_is_refused(tokenizer, tmp_path):
    from so8t_lib.export.gguf_writer import write_gguf

    config = ModelConfig(name="so8t-g3", tiny={"arch": "gemma3", "hidden_size": 64, "num_hidden_layers": 6,
                                               "num_attention_heads": 4, "num_key_value_heads": 1,
                                               "intermediate_size": 128, "sliding_window": 8})
    model = SO8TModel.from_config(config, tokenizer)
    model.causal_lm.config.rope_parameters["sliding_attention"]["rope_theta"] = 20_000.0
    with pytest.raises(GGUFError, match="sliding-attention layers' rope_theta is 20000.0.*10000"):
        write_gguf(model, tmp_path / "g3.gguf", "f32")
    model.causal_lm.config.rope_parameters["sliding_attention"]["rope_theta"] = 10_000.0
    model.causal_lm.config.rope_parameters["full_attention"].update(rope_type="linear", factor=8.0)
    with pytest.raises(GGUFError, match="rope_parameters\\['full_attention'\\] has rope_type 'linear'"):
        write_gguf(model, tmp_path / "g3.gguf", "f32")


def _tokenizer_with(tokenizer, **parts):
    """A copy of the tiny preset's tokenizer with some pipeline steps replaced (normalizer=..., pre_tokenizer=...)."""
    import copy

    tok = copy.deepcopy(tokenizer)
    for name, value in parts.items():
        setattr(tok.backend_tokenizer, name, value)
    return tok


def test_a_tokenizer_llama_cpp_would_read_otherwise_is_refused_at_export_by_name(tokenizer, tmp_path):
    """A Gemma-style "▁" normalizer (or no byte-level step, or another split) was written as gpt2/qwen2 and
    exported "successfully", tokenizing differently in llama.cpp."""
    from tokenizers import normalizers, pre_tokenizers

    from so8t_lib.export.gguf_writer import write_gguf

    cases = {"normalizer \\['Replace'\\]": dict(normalizer=normalizers.Replace(" ", "▁")),
             "not byte-level BPE": dict(pre_tokenizer=pre_tokenizers.Metaspace(), decoder=None),
             "Qwen2's pattern": dict(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False))}
    for says, parts in cases.items():
        model = SO8TModel.from_config(ModelConfig(name="so8t-guard"), _tokenizer_with(tokenizer, **parts))
        with pytest.raises(GGUFError, match=says):
            write_gguf(model, tmp_path / "tok.gguf", "f32")
        assert not list(tmp_path.iterdir())


def test_the_file_adds_a_bos_where_the_tokenizer_does(tokenizer, tmp_path):
    """add_bos_token was always written false; it now follows the HF tokenizer's post-processor."""
    from tokenizers import processors

    from so8t_lib.export.gguf_file import open_gguf
    from so8t_lib.export.gguf_writer import write_gguf

    bos = _tokenizer_with(tokenizer, post_processor=processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokenizer.convert_tokens_to_ids("<|endoftext|>"))]))
    bos.bos_token = "<|endoftext|>"
    key = "tokenizer.ggml.add_bos_token"
    for tok, expected in ((tokenizer, False), (bos, True)):
        path = write_gguf(SO8TModel.from_config(ModelConfig(name="so8t-guard"), tok), tmp_path / f"{expected}.gguf")
        assert open_gguf(path, want=lambda k: k == key).fields[key].contents() is expected


def test_nfd_requests_get_the_hf_token_ids_and_probabilities_from_the_f32_file(two_exports, tmp_path):
    """The tokenizer's NFC normalizer travels as so8t.normalizer and the backend applies it between special
    tokens: NFD text got other ids in llama.cpp than in HF, and decisions flipped on the f32 file."""
    import unicodedata

    from so8t_lib.export.gguf_file import open_gguf
    from so8t_lib.export.gguf_meta import NORMALIZER_KEY, read_metadata
    from so8t_lib.export.gguf_rewrite import rewrite_gguf
    from so8t_lib.model.prompts import format_prompt

    ckpt, f32 = two_exports[0]
    model, backend = SO8TModel.load(ckpt), GGUFBackend(f32, f32_kv_cache=True)
    assert read_metadata(f32)[NORMALIZER_KEY] == "NFC" == backend.normalizer
    requests = [unicodedata.normalize("NFD", t) for t in (
        "経費精算の締め日はいつですか", "パスワードを変更できますか？", "Café déjà vu: naïve résumé, s'il vous plaît")]
    contexts = [unicodedata.normalize("NFD", "人事部のガイドライン"), None, None]
    assert all(unicodedata.normalize("NFC", r) != r for r in requests)
    for request, context in zip(requests, contexts):
        prompt = format_prompt(model.tokenizer, request, context)
        assert backend.format_prompt(request, context) == prompt
        assert backend.prompt_tokens(prompt) == model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    hf, ours = model.decide(requests, contexts), backend.decide(requests, contexts)
    torch.testing.assert_close(ours, hf, atol=1e-4, rtol=0)
    # a file written before the key keeps llama.cpp's own tokenization
    old = tmp_path / "old.gguf"
    rewrite_gguf(open_gguf(f32), old, drop_key=lambda key: key == NORMALIZER_KEY)
    before = GGUFBackend(old)
    prompt = before.format_prompt(requests[0])
    assert before.normalizer == "none"
    assert before.prompt_tokens(prompt) == before.embedder.tokenize(prompt.encode(), add_bos=False, special=True)


def test_a_rung_named_twice_is_made_once(two_exports, tmp_path, capsys):
    """`--quant Q8_0,q8_0` made the rung twice into one staged file; moving in then failed half-way, leaving a
    mix of two exports in --out."""
    from so8t_lib.cli import main as so8t
    from so8t_lib.export.gguf_meta import verify_sha256_sidecar

    ckpt, _ = two_exports[0]
    paths = export(ckpt, tmp_path / "api", ["Q8_0", "q8_0"], progress=False)
    assert [p.name for p in paths] == ["so8t-guard-f16.gguf", "so8t-guard-q8_0.gguf"]
    so8t(["export", str(ckpt), "--out", str(tmp_path / "cli"), "--quant", "q8_0,Q8_0,Q8_0"])
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        "so8t-guard-f16.gguf", "so8t-guard-f16.gguf.sha256", "so8t-guard-q8_0.gguf", "so8t-guard-q8_0.gguf.sha256"]
    assert all(verify_sha256_sidecar(p) for p in (tmp_path / "cli").glob("*.gguf"))


def _contents(folder):
    """Every entry of a folder (hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_refit_that_cannot_be_done_leaves_out_as_it_was(two_exports, tokenizer, tmp_path, monkeypatch, capsys):
    """The refit ran after export() had moved the new files in: a max-pooling head (which the refit refuses) or a
    refit failing on a later rung left --out with the new model's files and without the refit asked for."""
    from so8t_lib.cli import export as export_cli
    from so8t_lib.cli import main as so8t

    out = tmp_path / "dist"
    export(two_exports[0][0], out, ["Q8_0"], progress=False)  # the previous export, in service
    before = _contents(out)
    max_head = _checkpoint(tmp_path, tokenizer, 2, head={"pooling": "max", "hidden_units": 32})
    assert so8t(["export", str(max_head), "--out", str(out), "--quant", "Q8_0", "--refit-head", "Q8_0"]) == 2
    assert "error: a max-pooling SafetyHeadB cannot be refitted" in capsys.readouterr().err
    assert _contents(out) == before

    def failing(checkpoint, files, rows):
        assert all(p.is_file() and p.parent != out for p in files.values())  # staged, not yet in --out
        raise GGUFError(f"{files['Q8_0'].name}: the refit failed")

    monkeypatch.setattr(export_cli, "refit_rungs", failing)
    assert so8t(["export", str(two_exports[1][0]), "--out", str(out), "--quant", "Q8_0", "--refit-head", "Q8_0"]) == 2
    assert "q8_0.gguf: the refit failed" in capsys.readouterr().err
    assert _contents(out) == before


def test_export_names_a_bad_checkpoint_or_out_folder_without_a_traceback(two_exports, tmp_path, capsys):
    """A missing checkpoint folder, one without manifest.json and an --out that is a file printed tracebacks."""
    from so8t_lib.cli import main as so8t

    ckpt, _ = two_exports[0]
    no_manifest = tmp_path / "no-manifest"
    shutil.copytree(ckpt, no_manifest)
    (no_manifest / "manifest.json").unlink()
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = {(str(tmp_path / "missing"), str(tmp_path / "o1")): "missing",
             (str(no_manifest), str(tmp_path / "o2")): "manifest.json",
             (str(ckpt), str(a_file)): "a-file is a file, not a folder"}
    for (checkpoint, out), says in cases.items():
        assert so8t(["export", checkpoint, "--out", out]) == 2
        err = capsys.readouterr().err
        assert "error: " in err and says in err and "Traceback" not in err, err
    assert a_file.read_text() == "not a folder"
