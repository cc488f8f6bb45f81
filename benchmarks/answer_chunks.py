"""How long a decision waits while an ALLOW's answer is being written: one pass (before) against chunks (now).

    python benchmarks/answer_chunks.py [--model checkpoints/so8t-demo] [--max-tokens 128] [--chunks 0 4 8 16]
                                       [--repeats 3] [--out benchmarks/results/answer_chunks.json]

The gate's model has one thread. Written in one call, an answer held every decision that arrived meanwhile until
it was finished (up to ``generation_timeout_s``); written ``answer_chunk_tokens`` at a time
(``serve/answering.py``), a decision waits for one chunk. For each way (``0``: one pass, the old behaviour; else
the chunk size), the script writes a greedy answer through the runtime's own ``write_answer`` on a
``ModelWorker``, and meanwhile sends a one-request decision through the same worker every ``--every`` seconds,
timing each from its call to its probabilities; the ways alternate over ``--repeats`` rounds. It reports the
waits (median, 95th percentile, longest, over all rounds), the answer's median wall time with decisions sent and
with none (the chunks' own cost), each also as a ratio to the one-pass way's in the same run, and whether every
way wrote the same text. What one more call costs is measured apart, on a tiny random model where a token is cheap
enough for it to show. ``--model`` takes a checkpoint
folder or a ``.gguf`` file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.serve.answering import AnswerTurns, write_answer  # noqa: E402
from so8t_lib.serve.backends import load_decider  # noqa: E402
from so8t_lib.serve.config import InferenceConfig  # noqa: E402
from so8t_lib.serve.model_worker import DECIDE, ModelWorker  # noqa: E402

# the default writes this answer to the token limit (it repeats itself), so every way writes the same length
ANSWERED = "How do I submit my travel expenses for last month's trip to Osaka?"
DECIDED = ["How do I reset my VPN password?", "経費精算の締め日はいつですか"]


def answer_with_decisions(decider, worker: ModelWorker, inference: InferenceConfig, every_s: float | None) -> dict:
    """One answer written on ``worker``; a decision sent every ``every_s`` seconds meanwhile (None: none)."""
    done, text = threading.Event(), {}

    def write() -> None:
        try:
            text["answer"] = write_answer(worker, decider, ANSWERED, None, inference, AnswerTurns())
        finally:
            done.set()

    waits = []
    began = time.perf_counter()
    writer = threading.Thread(target=write)
    writer.start()
    while every_s is not None and not done.wait(every_s):
        sent = time.perf_counter()
        worker.call(lambda: decider.decide(DECIDED[:1]), DECIDE, 600)
        waits.append(time.perf_counter() - sent)
    writer.join()
    return {"answer_s": time.perf_counter() - began, "waits_s": waits, "text": text.get("answer")}


def answer_tokens(decider, text: str | None) -> int | None:
    """The answer's length in the model's tokens, where the decider exposes its tokenizer (the HF backend)."""
    tokenizer = getattr(decider, "tokenizer", None)
    return len(tokenizer(text or "", add_special_tokens=False)["input_ids"]) if tokenizer is not None else None


def call_overhead_ms(tokens: int = 64, repeats: int = 5) -> dict:
    """What one more call costs, on a tiny random Gemma3-shaped model (where a token is cheap, so the per-call cost
    shows): one answer of ``tokens`` written in one call against one token per call, alternated ``repeats`` times."""
    import torch

    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel
    from so8t_lib.model.tokenizer import tiny_tokenizer

    torch.manual_seed(0)
    tiny = {"arch": "gemma3", "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 1, "intermediate_size": 128, "sliding_window": 6}
    model = SO8TModel.from_config(ModelConfig(tiny=tiny), tiny_tokenizer()).eval()

    def seconds(chunk: int) -> float:
        answer = model.start_answer(ANSWERED, max_tokens=tokens)
        began = time.perf_counter()
        while not answer.advance(chunk):
            pass
        return time.perf_counter() - began

    whole, single = [], []
    for _ in range(repeats + 1):  # the first round warms up
        whole.append(seconds(tokens))
        single.append(seconds(1))
    whole_s, single_s = float(np.median(whole[1:])), float(np.median(single[1:]))
    return {"tokens": tokens, "one_call_s": whole_s, "one_token_per_call_s": single_s,
            "ms_per_extra_call": 1000 * (single_s - whole_s) / (tokens - 1), "ms_per_token": 1000 * whole_s / tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/so8t-demo")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 4, 8, 16], help="0: the answer in one pass")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between two decisions sent")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each way's answer times are medians")
    parser.add_argument("--out", default="benchmarks/results/answer_chunks.json")
    args = parser.parse_args()
    if 0 not in args.chunks:
        parser.error("--chunks must include 0, the one-pass way every ratio is taken against")
    decider = load_decider(args.model, "cpu")
    worker = ModelWorker()
    decider.decide(DECIDED)  # warm both paths before timing
    decider.generate(ANSWERED, max_tokens=4, temperature=0.0)
    alone = []
    for _ in range(10):
        sent = time.perf_counter()
        worker.call(lambda: decider.decide(DECIDED[:1]), DECIDE, 600)
        alone.append(time.perf_counter() - sent)
    runs: dict[int, list] = {chunk: [] for chunk in args.chunks}
    for _ in tqdm(range(args.repeats), desc="rounds", unit="round"):  # the ways alternate: load drifts alike
        for chunk in args.chunks:
            inference = InferenceConfig(max_tokens=args.max_tokens, temperature=0.0, generation_timeout_s=3600,
                                        answer_chunk_tokens=chunk or args.max_tokens)
            runs[chunk].append((answer_with_decisions(decider, worker, inference, None),
                                answer_with_decisions(decider, worker, inference, args.every)))
    ways = {}
    for chunk, pairs in runs.items():
        waits = np.array([w for _, busy in pairs for w in busy["waits_s"]] or [0.0])
        texts = {run["text"] for pair in pairs for run in pair}
        ways["one_pass" if chunk == 0 else f"chunks_of_{chunk}"] = {
            "chunk_tokens": chunk or args.max_tokens, "decisions_sent": len(waits),
            "decision_wait_p50_s": float(np.median(waits)), "decision_wait_p95_s": float(np.percentile(waits, 95)),
            "decision_wait_max_s": float(waits.max()),
            "answer_s_no_decisions": float(np.median([quiet["answer_s"] for quiet, _ in pairs])),
            "answer_s_with_decisions": float(np.median([busy["answer_s"] for _, busy in pairs])),
            "same_text_as_no_decisions": len(texts) == 1, "text": pairs[0][0]["text"]}
    worker.close()
    base = ways["one_pass"]
    for way in ways.values():
        way["decision_wait_max_vs_one_pass"] = way["decision_wait_max_s"] / base["decision_wait_max_s"]
        way["answer_s_no_decisions_vs_one_pass"] = way["answer_s_no_decisions"] / base["answer_s_no_decisions"]
    texts = {way.pop("text") for way in ways.values()}
    result = {"model": args.model, "max_tokens": args.max_tokens, "every_s": args.every,
              "decision_alone_p50_s": float(np.median(alone)), "same_text_every_way": len(texts) == 1,
              "answer_chars": len(next(iter(texts)) or ""), "answer_tokens": answer_tokens(decider, next(iter(texts))),
              "repeats": args.repeats, "ways": ways, "tiny_model_call_overhead": call_overhead_ms(),
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    out = atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name, way in ways.items():
        print(f"{name:>12}: decision wait p50 {way['decision_wait_p50_s']:.2f}s max {way['decision_wait_max_s']:.2f}s "
              f"({way['decision_wait_max_vs_one_pass']:.3f}x); answer alone {way['answer_s_no_decisions']:.1f}s "
              f"({way['answer_s_no_decisions_vs_one_pass']:.2f}x)")
    overhead = result["tiny_model_call_overhead"]
    print(f"one more call costs {overhead['ms_per_extra_call']:.1f} ms (tiny model, {overhead['ms_per_token']:.1f} ms a "
          "token there)")
    print(f"decision alone p50 {result['decision_alone_p50_s']:.3f}s; same text every way: "
          f"{result['same_text_every_way']}; wrote {out}")


if __name__ == "__main__":
    main()
