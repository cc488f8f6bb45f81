"""Can the GGUF backend read a middle layer? llama.cpp's per-token layer outputs against the HF model's.

    python benchmarks/gguf_layer_states.py [--checkpoint checkpoints/so8t-demo] [--gguf dist/so8t-demo-f16.gguf] \
        [--rows 32] [--out benchmarks/results/gguf_layer_states.json]

``head_layer_probe.py`` finds the decision more linearly readable in the middle of the base (and in several
depths at once) than in the final-norm state that llama.cpp's MEAN pooling returns. A head reading those
states would need them from the GGUF file too. llama.cpp names every layer's output ``l_out-<i>`` in its
graph and hands each node to an eval callback (``llama_context_params.cb_eval``) that may copy it out with
ggml's public ``ggml_backend_tensor_get`` (``so8t_lib.serve.gguf_layers``, what GGUFBackend uses when a head
reads middle layers). This script does that for one prompt at a time and compares the
mean over the prompt of every layer output with the HF hidden state of the merged checkpoint (LoRA merged,
gates folded: the function the file computes), on stratified test rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.data.tables import load_split, requests_and_contexts, stratified_sample  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402
from so8t_lib.serve.gguf_layers import LayerCapture, node_name  # noqa: E402


def layer_states(backend: GGUFBackend, capture: LayerCapture, tokens: list[int]) -> dict[str, np.ndarray]:
    """Each captured node as (n_tokens, n_embd) for one prompt, alone in its batch."""
    batch = backend.embedder._batch
    batch.reset()
    batch.add_sequence(tokens, 0, True)
    try:
        return capture.decode(batch)
    finally:
        batch.reset()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/so8t-demo")
    parser.add_argument("--gguf", default="dist/so8t-demo-f16.gguf")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/gguf_layer_states.json")
    args = parser.parse_args(argv)
    if not Path(args.gguf).is_file():
        sys.exit(f"missing {args.gguf}: run `make demo` (or so8t export {args.checkpoint})")
    started = time.perf_counter()
    model = SO8TModel.load(args.checkpoint, load_in_4bit=False, dtype="float32")
    merged, _ = model.merge_for_export()
    layers = merged.config.num_hidden_layers
    backend = GGUFBackend(args.gguf, f32_kv_cache=True)  # only the weights' precision differs from HF
    # hidden-state i (HF numbering) for i = 1..layers; the last one after the final norm, as HF returns it
    names = {node_name(i, layers): i for i in range(1, layers + 1)}
    capture = LayerCapture(backend.embedder, set(names))
    rows = stratified_sample(load_split("test"), args.rows, seed=0).to_dict("records")
    cosines: dict[str, list[float]] = {name: [] for name in sorted(names)}
    errors: dict[str, list[float]] = {name: [] for name in sorted(names)}
    for request, context in zip(*requests_and_contexts(rows)):
        prompt = model.format_prompt(request, context)
        tokens = backend.prompt_tokens(prompt)
        assert tokens == model.tokenizer(prompt, add_special_tokens=False)["input_ids"], "tokenizers disagree"
        with torch.no_grad():
            hidden = merged.get_decoder()(input_ids=torch.tensor([tokens]), output_hidden_states=True).hidden_states
        ours = layer_states(backend, capture, tokens)
        for name, index in names.items():
            a, b = hidden[index][0].mean(0).numpy(), ours[name].mean(0)
            cosines[name].append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            errors[name].append(float(np.linalg.norm(a - b) / np.linalg.norm(a)))
    per_node = {name: {"cosine_mean": round(float(np.mean(v)), 6), "cosine_min": round(float(np.min(v)), 6),
                       "relative_error_max": float(f"{max(errors[name]):.3g}")}
                for name, v in cosines.items()}
    result = {
        "benchmark": "gguf_layer_states", "checkpoint": project_relative(args.checkpoint),
        "gguf": project_relative(args.gguf), "rows": len(rows), "layers": layers,
        "nodes": per_node, "worst_cosine": min(v["cosine_min"] for v in per_node.values()),
        "worst_relative_error": max(v["relative_error_max"] for v in per_node.values()),
        "seconds": round(time.perf_counter() - started, 1),
        "note": "mean over the prompt of each llama.cpp graph node (eval callback) against the HF hidden state "
                "of the merged checkpoint; l_out-i is decoder layer i's output, result_norm the last layer's after the "
                "final norm",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps({"worst_cosine": result["worst_cosine"], "rows": len(rows)}))
    return result


if __name__ == "__main__":
    main()
