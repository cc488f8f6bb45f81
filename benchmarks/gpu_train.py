"""Training on one CUDA GPU: the 7B-shaped QLoRA memory figure, and the Gemma 3 270M recipe at full fine-tuning.

    python benchmarks/gpu_train.py --gemma-dir DIR --out benchmarks/results/gpu_train_h200.json
    python benchmarks/gpu_train.py --smoke --gemma-dir DIR --out /tmp/gpu_smoke.json   # CPU, toy shapes

No weights are downloaded (there is no hub): each base is built from its architecture with random weights,
written to a temporary folder beside a tokenizer and loaded through the project's own path
(``SO8TModel.from_config`` -> ``from_pretrained``, nf4 on loading for QLoRA), then stepped by the real
``Trainer.train_step`` (composite loss, PET, both optimizers, clipping). Memory and speed do not depend on the
weights' values; decisions and losses do, so none are reported.

QLoRA at 7B shape: Qwen2.5-7B's published architecture (hidden 3584, 28 layers, GQA 28/4, MLP 18944, vocabulary
152,064) under ``configs/qwen2.5-7b-qlora.yaml`` (nf4 + double quantization, bf16 compute, LoRA r=16 on every
projection, gates on every layer, gradient checkpointing, batch 1 x 16 accumulation). Two data shapes: every
micro-batch exactly 512 tokens (corpus requests joined until they pass 512, then cut: the issue's "seq 512,
batch 1" figure), and the corpus rows as they are. The project's own byte-level BPE (Qwen2's pre-tokenizer)
stands in for Qwen's tokenizer, so "the corpus as it is" has our token counts, not Qwen's.

Gemma 3 270M: the architecture from ``--gemma-dir/config.json`` (the converted base's) with its real tokenizer
(``tokenizer.json``, or ``tokenizer.json.xz``), under ``configs/gemma3-270m.yaml`` (batch 16, max length 256,
16 target tokens, 4 LM positions per row) in four variants built one after another, the first the baseline:
the recipe (layers 0-11 frozen and cached, LoRA + gates on 12-17); LoRA + gates on every layer; full fine-tuning
(every base weight trained by the task optimizer, fp32 weights, bf16 autocast, LoRA off, gates on); and full
fine-tuning at batch 64. Full fine-tuning is a measurement here, not a training mode of the library: a
checkpoint stores only what SO8T adds to a frozen base.

Peak memory is torch's (``max_memory_allocated``, and ``max_memory_reserved``, the allocator's cache, nearer
what the card must hold), reset after loading; ``device_used_mb`` adds the CUDA context (free/total from the
driver, read right after the steps, with the allocator's cache still held).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.config import load_config  # noqa: E402
from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.tables import load_table  # noqa: E402
from so8t_lib.model.shapes import QWEN25_7B_SHAPE as QWEN25_7B  # noqa: E402
from so8t_lib.model.shapes import TOY_QWEN_SHAPE as SMOKE_QWEN  # noqa: E402
from so8t_lib.model.tokenizer import tiny_tokenizer  # noqa: E402
from so8t_lib.train.collate import table_rows  # noqa: E402
from so8t_lib.train.optim import lr_multiplier  # noqa: E402
from so8t_lib.train.trainer import Trainer  # noqa: E402

CORPUS = ROOT / "data" / "so8t_safety"
SEQ = 512
LONG_ROWS = 64  # rows of SEQ tokens: more than the timed micro-batches need
CUDA = torch.cuda.is_available()


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def memory(reset: bool = False) -> dict:
    """Torch's peak figures since the last reset, and the whole device's use (context included)."""
    if not CUDA:
        return {}
    free, total = torch.cuda.mem_get_info()
    report = {"allocated_mb": torch.cuda.memory_allocated() / 2**20,
              "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
              "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20,
              "device_used_mb": (total - free) / 2**20}
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return report


def write_random_base(model_cls, config, folder: Path, tokenizer_source) -> None:
    """A base folder as from_pretrained expects it: random weights in bf16 and a tokenizer."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: a 7B fp32 copy would be 30 GB
    try:
        with torch.device("cuda" if CUDA else "cpu"):
            lm = model_cls(config)
    finally:
        torch.set_default_dtype(default)
    lm.save_pretrained(folder, max_shard_size="4GB")
    del lm
    if CUDA:
        torch.cuda.empty_cache()
    tokenizer_source(folder)


def time_steps(trainer: Trainer, steps: int, warmup: int) -> dict:
    for _ in range(warmup):
        trainer.train_step()
    sync()
    memory(reset=True)  # the steady-state peak: optimizer states exist after the warm-up step
    tokens, start = 0, time.perf_counter()
    for _ in range(steps):
        tokens += trainer.train_step()["tokens"]
    sync()
    elapsed = time.perf_counter() - start
    micro = steps * trainer.tcfg.grad_accum
    return {"optimizer_steps": steps, "micro_batches": micro, "seconds": elapsed, "s_per_step": elapsed / steps,
            "tokens": tokens, "tokens_per_s": tokens / elapsed, **memory()}


def use_rows(trainer: Trainer, rows: list[dict]) -> None:
    """Step on other rows without rebuilding (and reloading) the model: plain epoch order, from the start."""
    trainer.train_rows, trainer.row_lengths = rows, None
    trainer.state.epoch = trainer.state.batch_in_epoch = 0


def long_rows(rows: list[dict], tokenizer, seq: int) -> list[dict]:
    """Rows whose request alone passes ``seq`` tokens (corpus requests joined), so every batch is cut at seq."""
    joined, out, parts = [], [], []
    for row in rows:
        parts.append(row["user_request"])
        if len(tokenizer(" ".join(parts))["input_ids"]) > seq:
            joined.append(" ".join(parts))
            out.append({**row, "user_request": joined[-1], "id": f"long-{len(out)}"})
            parts = []
            if len(out) == LONG_ROWS:
                break
    return out


# ----- QLoRA at 7B shape ------------------------------------------------------------------------------------
def qlora_7b(work: Path, smoke: bool, steps: int, extra: list[str], corpus_too: bool = True) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    shape = SMOKE_QWEN if smoke else QWEN25_7B
    config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    base = work / "qwen2.5-7b-shape"
    clock = time.perf_counter()
    write_random_base(Qwen2ForCausalLM, config, base, tokenizer.save_pretrained)
    write_s = time.perf_counter() - clock
    data = work / "data-512"
    data.mkdir()
    corpus = table_rows(load_table(CORPUS / "train.jsonl"))
    # long rows of their own per split, ids too: a run refuses a val row that asks what a train row asks
    for split, source in (("train", corpus), ("val", corpus[::-1])):
        lines = [json.dumps({**r, "id": f"{split}-{r['id']}"}, ensure_ascii=False)
                 for r in long_rows(source, tokenizer, SEQ)]
        (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    memory(reset=True)
    clock = time.perf_counter()
    cfg = load_config(ROOT / "configs" / "qwen2.5-7b-qlora.yaml", [
        f"model.base_model={base}", f"training.data_dir={data}", f"training.output_dir={work}/run-7b",
        f"training.max_steps={steps + 1}", f"training.max_length={SEQ}", "training.autosave_minutes=1000",
        *([] if CUDA else ["model.dtype=float32", "training.mixed_precision='no'", "training.grad_accum=2"]), *extra])
    trainer = Trainer(cfg)
    load = {"load_s": time.perf_counter() - clock, **memory(reset=True)}
    model = trainer.model
    # bitsandbytes' own layers only (peft's LoRA wrapper around each one shares the class name)
    counts = {"nf4_projections": sum(type(m).__name__ == "Linear4bit" and type(m).__module__.startswith("bitsandbytes")
                                     for m in model.modules()),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    results = {"shape": dict(shape), "overrides": extra, "write_random_base_s": write_s, "after_load": load,
               **counts, "variants": {}}
    results["variants"]["seq 512, batch 1 (every micro-batch cut at 512 tokens)"] = time_steps(trainer, steps, 1)
    if corpus_too:
        use_rows(trainer, corpus)
        results["variants"]["corpus rows as they are, batch 1"] = time_steps(trainer, steps, 1)
    del trainer, model
    shutil.rmtree(base)
    return results


# ----- Gemma 3 270M: the recipe, LoRA everywhere, full fine-tuning -------------------------------------------
def gemma_tokenizer_files(gemma_dir: Path):
    def copy(folder: Path) -> None:
        packed = gemma_dir / "tokenizer.json.xz"
        if packed.is_file():
            (folder / "tokenizer.json").write_bytes(lzma.decompress(packed.read_bytes()))
        else:
            shutil.copy(gemma_dir / "tokenizer.json", folder / "tokenizer.json")
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            if (gemma_dir / name).is_file():
                shutil.copy(gemma_dir / name, folder / name)
    return copy


def full_finetune(trainer: Trainer) -> int:
    """Every base weight joins the task optimizer (fp32 master weights, AdamW, the task schedule)."""
    lm = trainer.model.causal_lm
    base = [p for n, p in lm.named_parameters() if ".r_safe." not in n and ".r_cmd." not in n]
    for param in base:
        param.requires_grad_(True)
    opt_cfg = trainer.config.training.task_optimizer
    task = [p for pg in trainer.opt_task.param_groups for p in pg["params"]]
    optimizer = torch.optim.AdamW(task + base, lr=opt_cfg.lr, betas=opt_cfg.betas, weight_decay=opt_cfg.weight_decay)
    trainer.opt_task = trainer.accelerator.prepare(optimizer)
    trainer.sched_task = torch.optim.lr_scheduler.LambdaLR(
        trainer.opt_task, lr_multiplier(opt_cfg, trainer.tcfg.max_steps))
    return sum(p.numel() for p in base)


def gemma(work: Path, gemma_dir: Path, smoke: bool, steps: int) -> dict:
    from transformers import AutoConfig, Gemma3ForCausalLM

    config = AutoConfig.from_pretrained(gemma_dir)
    if smoke:
        config.hidden_size, config.intermediate_size, config.num_hidden_layers = 64, 128, 18
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 1, 16
        config.layer_types = config.layer_types[:18]
    base = work / "gemma3-270m-shape"
    write_random_base(Gemma3ForCausalLM, config, base, gemma_tokenizer_files(gemma_dir))
    common = [f"model.base_model={base}", f"training.data_dir={CORPUS}", "training.head_warm_start=false",
              "training.autosave_minutes=1000", f"training.max_steps={steps + 2}",
              "training.mixed_precision=" + ("bf16" if CUDA else "'no'")]
    everywhere = ["training.freeze_below=0", "training.cache_frozen_states=false", "model.gates.layers=all"]
    variants = {
        "recipe: layers 0-11 frozen and cached, LoRA + gates on 12-17": [],
        "LoRA + gates on every layer": [*everywhere, "model.lora.layers=all"],
        "full fine-tuning, batch 16": [*everywhere, "model.lora.r=0", "model.dtype=float32"],
        "full fine-tuning, batch 64": [*everywhere, "model.lora.r=0", "model.dtype=float32",
                                       "training.batch_size=64"],
    }
    results: dict = {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                     "vocab": config.vocab_size, "variants": {}}
    for i, (name, overrides) in enumerate(variants.items()):
        memory(reset=True)
        cfg = load_config(ROOT / "configs" / "gemma3-270m.yaml",
                          [*common, *overrides, f"training.output_dir={work}/run-gemma-{i}"])
        clock = time.perf_counter()
        trainer = Trainer(cfg)
        setup_s = time.perf_counter() - clock
        full = full_finetune(trainer) if "full" in name else 0
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        embedding = trainer.model.causal_lm.get_input_embeddings().weight
        before = embedding.detach().clone()
        timing = time_steps(trainer, steps, 2)
        results["variants"][name] = {"overrides": overrides, "setup_s": setup_s, "trainable_parameters": trainable,
                                     "base_parameters_trained": full,
                                     "embedding_moved": bool((embedding.detach() != before).any()), **timing}
        del trainer
        if CUDA:
            torch.cuda.empty_cache()
    first = next(iter(results["variants"].values()))
    for row in results["variants"].values():
        row["tokens_per_s_vs_recipe"] = row["tokens_per_s"] / first["tokens_per_s"]
        if CUDA:
            row["peak_allocated_vs_recipe"] = row["peak_allocated_mb"] / first["peak_allocated_mb"]
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gemma-dir", type=Path, required=True,
                        help="a folder with the Gemma base's config.json and tokenizer.json (or tokenizer.json.xz)")
    parser.add_argument("--parts", default="qlora7b,gemma")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps of the 7B run (16 micro-batches each)")
    parser.add_argument("--gemma-steps", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for the 7B run (an ablation: model.gates.order=none, ...)")
    parser.add_argument("--seq-only", action="store_true", help="7B: the seq-512 data shape only")
    parser.add_argument("--smoke", action="store_true", help="toy shapes, to check the script on a CPU")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for the random bases (default: a temp dir)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not CUDA and not args.smoke:
        raise SystemExit("this benchmark measures a CUDA GPU; on a CPU only --smoke runs (toy shapes)")
    work = Path(tempfile.mkdtemp(prefix="so8t-gpu-", dir=args.work))
    caller_cache = os.environ.get("SO8T_CACHE")  # put back afterwards: the folder below is deleted at the end
    os.environ.setdefault("SO8T_CACHE", str(work / "cache"))
    report = {"benchmark": "gpu_train", "smoke": args.smoke, "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0) if CUDA else platform.processor() or "cpu",
              "python": platform.python_version()}
    import bitsandbytes
    import peft
    import transformers
    report.update(transformers=transformers.__version__, peft=peft.__version__, bitsandbytes=bitsandbytes.__version__)
    parts = {"qlora7b": ("qlora_7b_shape", lambda: qlora_7b(work, args.smoke, args.steps, args.set, not args.seq_only)),
             "gemma": ("gemma3_270m_shape", lambda: gemma(work, args.gemma_dir, args.smoke, args.gemma_steps))}
    try:
        for part in args.parts.split(","):
            key, run = parts[part]
            try:  # a device session is short: one part's failure must not cost the other's numbers
                report[key] = run()
            except Exception:  # noqa: BLE001 - recorded in the report, and the exit status says so
                report[key] = {"error": traceback.format_exc()}
                print(report[key]["error"], file=sys.stderr)
            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
            if CUDA:
                torch.cuda.empty_cache()
    finally:
        if caller_cache is None:  # else a caller in the same process would rebuild 1.3 GB into a deleted folder
            os.environ.pop("SO8T_CACHE", None)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if any("error" in report.get(parts[p][0], {}) for p in args.parts.split(",")):
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
