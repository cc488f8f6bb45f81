"""llama.cpp on one CUDA GPU: the GGUF backend's decisions with every layer offloaded against the CPU's, and the
speed of a 7B-shaped file on the GPU.

    python benchmarks/gguf_cuda.py --out benchmarks/results/gguf_cuda_h200.json   # llama-cpp-python built with CUDA
    python benchmarks/gguf_cuda.py --smoke --out /tmp/gguf_cuda_smoke.json        # any machine: toy shapes, plumbing

Part 1, parity. Three small random SO8T models of the kinds the library ships: Qwen2 with a max head reading layers
2 and 6; Gemma3 with a max head reading layers 2 and 4 (llama.cpp's pass stops at layer 4, as it stops at layer 8
for the default); Gemma3 with a mean head on the final norm (pooled by llama.cpp itself). Each is exported by the
project's ``export`` to f32, Q8_0 and Q4_K_M, and each file decides 120 corpus test rows through ``GGUFBackend`` on
the CPU (``n_gpu_layers=0``) and with every layer on the GPU (-1): worst cosine of the decision states, largest
probability difference, argmax agreement, and for f32 the same against the HF model. Decision p50 at batch 1 too.

Part 2, speed at 7B shape. Qwen2.5-7B's architecture with random bf16 weights under the SO8T parts of
``configs/qwen2.5-7b-qlora.yaml`` (LoRA, gates on every layer, SafetyHeadB), written by ``write_gguf`` (f16) and
quantized by ``quantize`` to Q4_K_M, then Q8_0; each file loaded with every layer on the GPU: decision p50 at
batch 1, decisions per second at batch 16, and a 128-token answer (prefill and decode, tokens per second).
The weights are random, so no decision of this part is reported, only time and memory.

The one CUDA build tried (on the lent H200's image) crashed at every model load once torch was imported; the
backend now refuses such a build (``so8t_lib/serve/llama_build.py``), and each part then reports that refusal.
``benchmarks/device/run_gguf_cuda.sh`` builds llama-cpp-python there and runs this script.

Both parts run against a deadline (``--budget-s``); the JSON is rewritten after every step, so a run cut off by
its machine still leaves what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import ModelConfig, load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.tables import load_split  # noqa: E402
from so8t_lib.export.gguf_meta import write_sha256_sidecar  # noqa: E402
from so8t_lib.export.gguf_writer import write_gguf  # noqa: E402
from so8t_lib.export.quantize import export, quantize  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.model.perturb import perturb_adapters  # noqa: E402
from so8t_lib.model.shapes import QWEN25_7B_SHAPE as QWEN25_7B  # noqa: E402
from so8t_lib.model.shapes import TOY_QWEN_SHAPE as SMOKE_QWEN  # noqa: E402
from so8t_lib.model.tokenizer import tiny_tokenizer  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402

SMALL = {"hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1,
         "intermediate_size": 128, "sliding_window": 8}
KINDS = {"qwen2, max head on layers 2 and 6": ("qwen2", {"pooling": "max", "hidden_units": 32, "read_layers": [2, 6]}),
         "gemma3, max head on layers 2 and 4 (stops early)": ("gemma3", {"pooling": "max", "hidden_units": 32,
                                                                          "read_layers": [2, 4]}),
         "gemma3, mean head on the final norm": ("gemma3", {"pooling": "mean"})}
PARITY_ROWS, TIMED = 120, 24
SMOKE_ROWS = 24  # --smoke: fewer rows, for the CPU test of this script
ANSWER_TOKENS = 128
CUDA = torch.cuda.is_available()
VERBOSE = bool(os.environ.get("SO8T_LLAMA_VERBOSE"))  # llama.cpp logs and a crash trace (quiet loads hide stderr)


def device_used_mb() -> float | None:
    """The whole GPU's used memory (llama.cpp's allocations included), or None without CUDA."""
    if not CUDA:
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def test_rows(n: int) -> tuple[list[str], list[str | None]]:
    rows = load_split("test").sample(n, random_state=1)
    return list(rows["user_request"]), [c or None for c in rows["context"]]


def p50_ms(fn, items: list, warmup: int = 2) -> float:
    for item in items[:warmup]:
        fn(item)
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def small_model(kind: str, tokenizer, requests, contexts) -> SO8TModel:
    """A random model whose head decides differently across rows: adapters moved as training would, the head's
    last layer scaled up and centred on these rows' states."""
    arch, head = KINDS[kind]
    model = SO8TModel.from_config(ModelConfig(name="so8t-cuda", tiny={"arch": arch, **SMALL}, head=head, load_in_4bit=False,
                                              gates={"init_std": 0.05}), tokenizer)
    perturb_adapters(model, scale=0.3)
    with torch.no_grad():
        last = [m for m in model.safety_head.net if isinstance(m, torch.nn.Linear)][-1]
        logits = model.decide(requests, contexts, return_logits=True)
        scale = 2.0 / float((logits - logits.mean(0)).std().clamp_min(1e-6))  # logits spread ~2 across rows
        last.weight.mul_(scale)
        last.bias.mul_(scale).sub_(logits.mean(0) * scale)
    return model


def compare(a_states, b_states, a_probs, b_probs) -> dict:
    cosine = torch.nn.functional.cosine_similarity(a_states.double(), b_states.double(), dim=-1)
    return {"worst_state_cosine": float(cosine.min()), "max_probability_difference": float((a_probs - b_probs).abs().max()),
            "argmax_agreement": float((a_probs.argmax(-1) == b_probs.argmax(-1)).float().mean())}


def parity(work: Path, smoke: bool, report: dict, save) -> None:
    tokenizer = tiny_tokenizer()
    requests, contexts = test_rows(SMOKE_ROWS if smoke else PARITY_ROWS)
    timed = SMOKE_ROWS // 2 if smoke else TIMED
    quants = ["Q4_K_M"] if smoke else ["Q8_0", "Q4_K_M"]
    for kind in list(KINDS)[1:2] if smoke else KINDS:  # --smoke: the default's kind (a stopped pass) only
        model = small_model(kind, tokenizer, requests, contexts)
        ckpt = model.save(work / f"ckpt-{len(report['parity'])}")
        model = SO8TModel.load(ckpt)
        hf_states, hf_probs = model.decision_states(requests, contexts), model.decide(requests, contexts)
        files = {p.name.rsplit("-", 1)[-1][:-5]: p
                 for p in export(ckpt, work / f"dist-{len(report['parity'])}", quants, f32=True,
                                 progress=False)}
        entry = {"decisions_seen": sorted(set(hf_probs.argmax(-1).tolist())), "files": {}}
        report["parity"][kind] = entry
        for quant in ("f32", *(q.lower() for q in quants)):
            kv32 = quant == "f32"  # exact parity with the HF model needs an f32 KV cache
            cpu = GGUFBackend(files[quant], n_gpu_layers=0, f32_kv_cache=kv32, verbose=VERBOSE)
            gpu = GGUFBackend(files[quant], n_gpu_layers=-1, f32_kv_cache=kv32, verbose=VERBOSE)
            result = {}
            states = {}
            for name, backend in (("cpu", cpu), ("gpu", gpu)):
                states[name] = (backend.decision_states(requests, contexts), backend.decide(requests, contexts))
                result[f"{name}_decide_p50_ms_batch1"] = p50_ms(
                    lambda i, b=backend: b.decide([requests[i]], [contexts[i]]), list(range(timed)))
            result["gpu_vs_cpu"] = compare(states["gpu"][0], states["cpu"][0], states["gpu"][1], states["cpu"][1])
            if kv32:
                result["gpu_vs_hf"] = compare(states["gpu"][0], hf_states, states["gpu"][1], hf_probs)
                result["cpu_vs_hf"] = compare(states["cpu"][0], hf_states, states["cpu"][1], hf_probs)
            entry["files"][quant] = result
            del cpu, gpu
            save()


def time_backend(backend: GGUFBackend, requests: list[str], timed: int) -> dict:
    """Decision p50 at batch 1, decisions/s at batch 16, and a 128-token answer's prefill+decode."""
    result = {"decide_p50_ms_batch1": p50_ms(lambda r: backend.decide([r]), requests[:timed])}
    batch = requests[:64]
    backend.decide(batch[:16])
    start = time.perf_counter()
    for i in range(0, len(batch), 16):
        backend.decide(batch[i:i + 16])
    result["decisions_per_s_batch16"] = len(batch) / (time.perf_counter() - start)
    backend.generate(requests[0], max_tokens=8)  # builds the generating context
    answers = []
    for request in requests[1:4]:
        start = time.perf_counter()
        out = backend.complete(request, max_tokens=ANSWER_TOKENS, stop_at_eos=False)
        answers.append({"prompt_tokens": out.prompt_tokens, "answer_tokens": out.answer_tokens,
                        "seconds": time.perf_counter() - start})
    result["answers"] = answers
    made = sum(a["answer_tokens"] for a in answers)
    result["answer_tokens_per_s"] = made / sum(a["seconds"] for a in answers)
    return result


def ladder_7b(work: Path, smoke: bool, deadline: float, report: dict, save) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    shape = SMOKE_QWEN if smoke else QWEN25_7B
    model_cfg = load_config(ROOT / "configs" / "qwen2.5-7b-qlora.yaml").model.model_copy(
        update={"name": "so8t-7b-shape", "load_in_4bit": False})
    entry = report["ladder_7b"] = {"shape": shape, "files": {}}
    clock = time.perf_counter()
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if CUDA else "cpu"):
            lm = Qwen2ForCausalLM(Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id,
                                              pad_token_id=tokenizer.pad_token_id))
            model = SO8TModel(lm, tokenizer, model_cfg)
    finally:
        torch.set_default_dtype(default)
    model.to("cuda" if CUDA else "cpu")
    f16 = write_gguf(model, work / "so8t-7b-shape-f16.gguf", "f16")
    write_sha256_sidecar(f16)
    entry["write_f16_s"] = time.perf_counter() - clock
    del model, lm
    if CUDA:
        torch.cuda.empty_cache()
    save()
    requests, _ = test_rows(80)
    for quant in ("Q4_K_M", "F16", "Q8_0"):
        if time.perf_counter() > deadline:
            entry["files"][quant] = "skipped: the run's time budget was spent"
            save()
            continue
        clock = time.perf_counter()
        path = f16 if quant == "F16" else quantize(f16, work / f"so8t-7b-shape-{quant.lower()}.gguf", quant)
        result = {"quantize_s": time.perf_counter() - clock, "file_mib": path.stat().st_size / 2**20}
        before = device_used_mb()
        clock = time.perf_counter()
        backend = GGUFBackend(path, n_gpu_layers=-1)
        result["load_s"] = time.perf_counter() - clock
        result.update(time_backend(backend, requests, SMOKE_ROWS // 2 if smoke else TIMED))
        used = device_used_mb()
        result["device_used_mb_by_llama_cpp"] = None if used is None else used - before
        entry["files"][quant] = result
        del backend
        if quant != "F16":
            path.unlink()
        save()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default="parity,ladder7b")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no new 7B rung starts after this many seconds")
    parser.add_argument("--smoke", action="store_true", help="toy 7B shape, for a machine without a GPU")
    args = parser.parse_args(argv)
    import llama_cpp

    start = time.perf_counter()
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    if not args.smoke and not (CUDA and offload):
        raise SystemExit("this benchmark needs a CUDA GPU and llama-cpp-python built with CUDA "
                         "(CMAKE_ARGS='-DGGML_CUDA=on'); use --smoke to check it on a CPU")
    report = {"benchmark": "gguf_cuda", "smoke": args.smoke, "llama_cpp_python": llama_cpp.__version__,
              "gpu_offload": offload, "torch": torch.__version__, "python": platform.python_version(),
              "gpu": torch.cuda.get_device_name(0) if CUDA else None,
              "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace"),
              "parity": {}, "errors": {}}

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - start
        atomic_write_text(args.out, json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    parts = {"parity": lambda work: parity(work, args.smoke, report, save),
             "ladder7b": lambda work: ladder_7b(work, args.smoke, start + args.budget_s, report, save)}
    for name in args.parts.split(","):
        with tempfile.TemporaryDirectory(prefix=f"so8t-gguf-cuda-{name}-") as tmp:
            try:
                parts[name](Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one part's failure is reported, the next part still runs
                report["errors"][name] = f"{type(exc).__name__}: {exc}"
                import traceback

                traceback.print_exc()
        save()
    return report


if __name__ == "__main__":
    main()
