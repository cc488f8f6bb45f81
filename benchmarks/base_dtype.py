"""The frozen base in bf16 or in fp32 on this CPU: what the body's speed gains and how far the head's state moves.

    python benchmarks/base_dtype.py [--rows 96] [--batch-size 16] [--repeats 3] [--layer 9] [--base DIR] \
        [--out benchmarks/results/base_dtype.json]

The Gemma recipes keep the frozen base in bf16 (``model.dtype: bfloat16``). The same ``--rows`` validation
prompts (a stratified sample, in the default config's prompt format, cut at its ``max_length``) go through the
base's decoder in fp32, the baseline, and in bf16, in batches sorted by length; each dtype gets one warm-up
batch, then ``--repeats`` timed passes, the two dtypes alternating so that a busy moment hurts both. tokens/s
counts real (unpadded) tokens. Beside the speed, what bf16 does to the state SafetyHeadB reads: the cosine
between the two dtypes' hidden states at ``--layer`` (9 = layer 8's output, which the default max-pools), per
real token, and the relative L2 error ||bf16 - fp32|| / ||fp32||, each on the raw states and on the states
standardised per feature with fp32's statistics, as SafetyHeadB's standardiser does before the layer whose output
it max-pools (a few outlier features carry most of Gemma's raw state norm, so raw cosines read close to 1). Whether the CPU has AVX512-BF16 is recorded: elsewhere torch
emulates bf16 matmuls and the ratio may fall below 1. Only the ratios carry over to another machine.

``--base`` takes any local causal-LM folder (config, weights, tokenizer); without it, the Gemma 3 270M base
converted under ``$SO8T_CACHE`` (converting it first if needed, about a minute).

``--checkpoint`` (a trained run, e.g. ``checkpoints/so8t-demo``) adds what the decisions do: the checkpoint loaded
twice, its base in fp32 and in bf16 (what it was trained with), decides the same ``--decide-rows`` test rows
(a stratified sample) through ``evaluate.predict`` as evaluation does; reported are how many decisions agree,
the largest probability difference, both models' macro-F1 and dangerous compliance, and the seconds each took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.tables import load_split, stratified_sample  # noqa: E402
from so8t_lib.eval.evaluate import table_contexts  # noqa: E402
from so8t_lib.model.heads import STANDARDIZER_EPS  # noqa: E402
from so8t_lib.model.prompts import format_prompt  # noqa: E402
from so8t_lib.workbench.pipeline import machine_facts  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the first is the baseline
DEFAULT_CONFIG = ROOT / "configs" / "training.yaml"


def cpu_has_avx512_bf16() -> bool | None:
    """None where /proc/cpuinfo cannot say (not Linux)."""
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def length_sorted_batches(tokenizer, prompts: list[str], max_length: int, batch_size: int) -> list[dict]:
    """Right-padded batches of similar length, as the training loop groups them; each keeps its token count."""
    ids = [row[-max_length:] for row in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for start in range(0, len(order), batch_size):
        rows = [ids[i] for i in order[start:start + batch_size]]
        width = max(map(len, rows))
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        batches.append({"input_ids": input_ids, "attention_mask": mask, "tokens": sum(map(len, rows))})
    return batches


@torch.no_grad()
def body_states(body, batch: dict, layer: int) -> torch.Tensor:
    out = body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer].float()


def timed_pass(body, batches: list[dict], layer: int) -> float:
    start = time.perf_counter()
    for batch in batches:
        body_states(body, batch, layer)
    return time.perf_counter() - start


def state_agreement(bodies: dict, batches: list[dict], layer: int) -> dict:
    """Cosine and relative L2 error of bf16's token states against fp32's, raw and standardised per feature with
    fp32's statistics over all the tokens, as SafetyHeadB's standardiser does before its first layer."""
    states = {name: [] for name in DTYPES}
    for batch in batches:
        real = batch["attention_mask"].bool()
        for name in DTYPES:
            states[name].append(body_states(bodies[name], batch, layer)[real])
    ref, low = (torch.cat(states[name]) for name in DTYPES)
    mean, scale = ref.mean(dim=0), torch.rsqrt(ref.var(dim=0, unbiased=False) + STANDARDIZER_EPS)
    report = {}
    for kind, (a, b) in {"raw": (ref, low), "standardised": ((ref - mean) * scale, (low - mean) * scale)}.items():
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        error = (b - a).norm(dim=-1) / a.norm(dim=-1)
        report[kind] = {"cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
                        "relative_error_mean": float(error.mean()), "relative_error_max": float(error.max())}
    return {"tokens": len(ref), **report}


def decision_agreement(checkpoint: str, rows: int) -> dict:
    """The checkpoint's decisions with its base in fp32 and in bf16, on the same stratified test rows."""
    import numpy as np

    from so8t_lib.core.metrics import dangerous_compliance_rate, macro_f1
    from so8t_lib.eval.evaluate import predict
    from so8t_lib.model import SO8TModel

    table = stratified_sample(load_split("test"), rows, seed=0)
    gold, runs = list(table["label"]), {}
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        model = SO8TModel.load(checkpoint, dtype=dtype)
        predict(model, table.head(8), progress=False)  # warm-up: first-call costs are no dtype's
        start = time.perf_counter()
        probs, decisions = predict(model, table, progress=False)
        runs[name] = {"seconds": time.perf_counter() - start, "probs": probs, "decisions": decisions,
                      "macro_f1": macro_f1(gold, decisions), "dangerous_compliance": dangerous_compliance_rate(gold, decisions)}
        del model
    ref, low = runs["fp32"], runs["bf16"]
    return {"checkpoint": checkpoint, "rows": len(table),
            "agreement": float(np.mean([a == b for a, b in zip(ref["decisions"], low["decisions"])])),
            "max_probability_difference": float(np.nanmax(np.abs(ref["probs"] - low["probs"]))),
            **{name: {key: run[key] for key in ("seconds", "macro_f1", "dangerous_compliance")}
               for name, run in runs.items()}}


def load_bodies(folder: Path) -> tuple[dict, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bodies = {}
    for name, dtype in DTYPES.items():
        lm = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).eval()
        bodies[name] = lm.get_decoder()  # the LM head is not what the head decides from
    return bodies, AutoTokenizer.from_pretrained(str(folder))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=96, help="validation prompts (stratified sample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per dtype")
    parser.add_argument("--layer", type=int, default=9, help="hidden-state index whose agreement is reported")
    parser.add_argument("--base", help="a local causal-LM folder (default: the converted Gemma 3 270M base)")
    parser.add_argument("--checkpoint", help="also compare a trained run's decisions with its base in fp32 and bf16")
    parser.add_argument("--decide-rows", type=int, default=200, help="test rows for --checkpoint (stratified)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "base_dtype.json"))
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--rows, --batch-size and --repeats must be at least 1")
    cfg = load_config(DEFAULT_CONFIG)
    if args.base:
        folder = Path(args.base)
    else:
        from so8t_lib.model.pretrained import GEMMA3_270M, converted_base

        folder = converted_base(GEMMA3_270M)
    bodies, tokenizer = load_bodies(folder)
    layers = bodies["fp32"].config.num_hidden_layers
    if not 0 <= args.layer <= layers:
        parser.error(f"--layer must lie in 0..{layers} (0 = embeddings) for this base")
    rows = stratified_sample(load_split("val"), args.rows, seed=0)
    prompts = [format_prompt(tokenizer, text, context, cfg.model.system_prompt)
               for text, context in zip(rows["user_request"], table_contexts(rows))]
    batches = length_sorted_batches(tokenizer, prompts, cfg.training.max_length, args.batch_size)
    tokens = sum(b["tokens"] for b in batches)
    seconds = {name: [] for name in DTYPES}
    for name in DTYPES:
        body_states(bodies[name], batches[-1], args.layer)  # warm-up on the longest batch
    for repeat in range(args.repeats):
        for name in (list(DTYPES) if repeat % 2 == 0 else list(DTYPES)[::-1]):
            seconds[name].append(timed_pass(bodies[name], batches, args.layer))
    best = {name: min(times) for name, times in seconds.items()}
    baseline = next(iter(DTYPES))
    results = {name: {"seconds_per_pass": times, "tokens_per_s": tokens / best[name],
                      "speed_ratio_to_fp32": best[baseline] / best[name]} for name, times in seconds.items()}
    payload = {
        "benchmark": "base_dtype",
        "command": " ".join(["python benchmarks/base_dtype.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"base": str(folder if args.base else folder.parent.name), "rows": len(rows),
                     "tokens_per_pass": tokens, "batch_size": args.batch_size, "repeats": args.repeats,
                     "max_length": cfg.training.max_length, "layer": args.layer},
        "machine": {**machine_facts(), "avx512_bf16": cpu_has_avx512_bf16()},
        "results": results,
        "bf16_against_fp32": state_agreement(bodies, batches, args.layer),
    }
    del bodies
    if args.checkpoint:
        payload["decisions"] = decision_agreement(args.checkpoint, args.decide_rows)
    atomic_write_text(Path(args.out), json.dumps(payload, indent=1))
    error = payload["bf16_against_fp32"]["standardised"]["relative_error_mean"]
    print(f"bf16 body {results['bf16']['speed_ratio_to_fp32']:.2f}x fp32 ({tokens} tokens per pass); "
          f"layer {args.layer} standardised relative error {error:.4f} on average -> {args.out}")
    if args.checkpoint:
        decided = payload["decisions"]
        print(f"{args.checkpoint}: bf16 and fp32 agree on {decided['agreement']:.3f} of {decided['rows']} test rows")
    return payload


if __name__ == "__main__":
    main()
