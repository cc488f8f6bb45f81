"""A GGUF file decides and answers within the positions its model was built for, as its checkpoint does: a prompt
past the trained context_length (or the backend's n_ctx) is refused, and an answer stops where the context ends."""

import pytest
import torch

from so8t_lib.core.config import ModelConfig
from so8t_lib.export.gguf_meta import GGUFError, read_metadata
from so8t_lib.model import SO8TModel
from so8t_lib.model.prompts import PromptTooLong

pytest.importorskip("llama_cpp")
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402

TRAINED = 96
SHORT = "Where is the printer?"
LONG = "Please tell me the expense deadline and the steps of the claim. " * 12


@pytest.fixture(scope="module")
def short_context_gguf(tmp_path_factory, tokenizer):
    from so8t_lib.export.quantize import export

    torch.manual_seed(0)
    model = SO8TModel.from_config(ModelConfig(name="so8t-ctx", tiny={"hidden_size": 64, "num_hidden_layers": 2,
                                                                      "intermediate_size": 128,
                                                                      "max_position_embeddings": TRAINED}), tokenizer)
    root = tmp_path_factory.mktemp("ctx")
    checkpoint = model.save(root / "ckpt")
    files = {p.name: p for p in export(checkpoint, root / "dist", [], f32=True, progress=False)}
    return SO8TModel.load(checkpoint), files["so8t-ctx-f32.gguf"]


def _tokens(backend, request):
    return len(backend.prompt_tokens(backend.format_prompt(request)))


def test_a_prompt_past_the_trained_context_is_refused_as_the_checkpoint_refuses_it(short_context_gguf):
    """llama.cpp only warned (n_ctx 2048 > n_ctx_train 96) and decided on positions the model never had."""
    model, path = short_context_gguf
    backend = GGUFBackend(path, n_threads=2)
    assert read_metadata(path)["context_length"] == TRAINED and backend.context_limit == TRAINED
    assert _tokens(backend, SHORT) < TRAINED < _tokens(backend, LONG)
    with pytest.raises(PromptTooLong):
        model.decide([LONG])
    with pytest.raises(GGUFError, match=rf"{_tokens(backend, LONG)} tokens, more than this model's context of {TRAINED}"):
        backend.decide([LONG])
    with pytest.raises(GGUFError, match="no room for an answer"):
        backend.generate(LONG, max_tokens=4)
    assert backend.decide([SHORT]).shape == (1, 3)  # the backend goes on deciding
    for nothing in (0, -1):  # llama.cpp reads these as "up to its own padded context"
        with pytest.raises(ValueError, match="max_tokens must be positive"):
            backend.complete(SHORT, max_tokens=nothing)


@pytest.mark.parametrize("n_ctx", [TRAINED, 90])  # 90: below the trained context, not a multiple of llama.cpp's 256
def test_an_answer_stops_where_the_context_ends(short_context_gguf, n_ctx):
    """llama.cpp checks a prompt against its padded context (256), not the n_ctx its buffers hold: a long answer
    after a long prompt overran them (numpy broadcast error) or was written past the positions."""
    _, path = short_context_gguf
    backend = GGUFBackend(path, n_ctx=n_ctx, n_threads=2)
    assert backend.context_limit == min(n_ctx, TRAINED)
    room = backend.context_limit - _tokens(backend, SHORT)
    done = backend.complete(SHORT, max_tokens=500, stop_at_eos=False)
    assert 0 < done.answer_tokens <= room
    answer = backend.start_answer(SHORT, max_tokens=500)
    while not answer.advance(16):
        pass
    assert 0 < len(answer._pieces) <= room + 1  # one streamed piece per token, and the closing one (its reason)
