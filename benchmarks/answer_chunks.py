"""How long a decision waits while an ALLOW's answer is being written: one pass (before) against chunks (now).

    python benchmarks/answer_chunks.py [--model checkpoints/so8t-demo] [--max-tokens 64] [--chunks 0 4 8 16]
                                       [--out benchmarks/results/answer_chunks.json]

The gate's model has one thread. Written in one call, an answer held every decision that arrived meanwhile until
it was finished (up to ``generation_timeout_s``); written ``answer_chunk_tokens`` at a time
(``serve/answering.py``), a decision waits for one chunk. For each way (``0``: one pass, the old behaviour; else
the chunk size), the script writes a greedy answer through the runtime's own ``write_answer`` on a
``ModelWorker``, and meanwhile sends a one-request decision through the same worker every ``--every`` seconds,
timing each from its call to its probabilities. It reports the waits (median, 95th percentile, longest), the
answer's wall time and the answer's time with no decisions sent (the chunks' own cost), each also as a ratio to
the one-pass way's in the same run, and whether every way wrote the same text. ``--model`` takes a checkpoint
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

from so8t_lib.serve.answering import write_answer  # noqa: E402
from so8t_lib.serve.backends import load_decider  # noqa: E402
from so8t_lib.serve.config import InferenceConfig  # noqa: E402
from so8t_lib.serve.model_worker import DECIDE, ModelWorker  # noqa: E402

ANSWERED = "Write a checklist for a new engineer's first week: accounts, laptop, training, and who to ask."
DECIDED = ["How do I reset my VPN password?", "経費精算の締め日はいつですか"]


def answer_with_decisions(decider, worker: ModelWorker, inference: InferenceConfig, every_s: float | None) -> dict:
    """One answer written on ``worker``; a decision sent every ``every_s`` seconds meanwhile (None: none)."""
    done, text = threading.Event(), {}

    def write() -> None:
        try:
            text["answer"] = write_answer(worker, decider, ANSWERED, None, inference, threading.Lock())
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/so8t-demo")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 4, 8, 16], help="0: the answer in one pass")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between two decisions sent")
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
    ways = {}
    for chunk in tqdm(args.chunks, desc="ways", unit="way"):
        inference = InferenceConfig(max_tokens=args.max_tokens, temperature=0.0, generation_timeout_s=3600,
                                    answer_chunk_tokens=chunk or args.max_tokens)
        quiet = answer_with_decisions(decider, worker, inference, None)
        busy = answer_with_decisions(decider, worker, inference, args.every)
        waits = np.array(busy["waits_s"]) if busy["waits_s"] else np.zeros(1)
        ways["one_pass" if chunk == 0 else f"chunks_of_{chunk}"] = {
            "chunk_tokens": chunk or args.max_tokens, "decisions_sent": len(busy["waits_s"]),
            "decision_wait_p50_s": float(np.median(waits)), "decision_wait_p95_s": float(np.percentile(waits, 95)),
            "decision_wait_max_s": float(waits.max()), "answer_s_no_decisions": quiet["answer_s"],
            "answer_s_with_decisions": busy["answer_s"], "same_text_as_no_decisions": quiet["text"] == busy["text"],
            "text": quiet["text"]}
    worker.close()
    base = ways["one_pass"]
    for way in ways.values():
        way["decision_wait_max_vs_one_pass"] = way["decision_wait_max_s"] / base["decision_wait_max_s"]
        way["answer_s_no_decisions_vs_one_pass"] = way["answer_s_no_decisions"] / base["answer_s_no_decisions"]
    texts = {way.pop("text") for way in ways.values()}
    result = {"model": args.model, "max_tokens": args.max_tokens, "every_s": args.every,
              "decision_alone_p50_s": float(np.median(alone)), "same_text_every_way": len(texts) == 1,
              "answer_chars": len(next(iter(texts)) or ""), "ways": ways,
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, way in ways.items():
        print(f"{name:>12}: decision wait p50 {way['decision_wait_p50_s']:.2f}s max {way['decision_wait_max_s']:.2f}s "
              f"({way['decision_wait_max_vs_one_pass']:.3f}x); answer alone {way['answer_s_no_decisions']:.1f}s "
              f"({way['answer_s_no_decisions_vs_one_pass']:.2f}x)")
    print(f"decision alone p50 {result['decision_alone_p50_s']:.3f}s; same text every way: "
          f"{result['same_text_every_way']}; wrote {out}")


if __name__ == "__main__":
    main()
