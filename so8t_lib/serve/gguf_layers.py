"""Middle layers' states out of llama.cpp, for a SafetyHeadB that reads several depths (``head.read_layers``).

llama.cpp's pooling hands back only the final-norm state. Its graph names every decoder layer's output
``l_out-<i>`` (and the final-norm output ``result_norm``) and offers each node to an eval callback
(``llama_context_params.cb_eval``) before and after computing it; ``LayerCapture`` asks for the nodes it
needs and copies them out with ggml's public ``ggml_backend_tensor_get``, so no ggml struct layout is assumed.
``benchmarks/gguf_layer_states.py`` measures these states against the HF model's.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from ..export.gguf_meta import GGUFError

FINAL_NORM_NODE = "result_norm"


def node_name(index: int, n_layers: int) -> str:
    """The llama.cpp graph node holding hidden-state ``index`` (HF numbering: i = decoder layer i-1's output,
    ``n_layers`` = the final-norm state)."""
    if not 1 <= index <= n_layers:
        raise ValueError(f"hidden-state index {index} outside 1..{n_layers}")
    return FINAL_NORM_NODE if index == n_layers else f"l_out-{index - 1}"


def _ggml_api():
    import llama_cpp

    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_get_name.restype, ggml.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    ggml.ggml_nbytes.restype, ggml.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    ggml.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return ggml


class LayerCapture:
    """A second llama.cpp context on a loaded model's weights whose decode also copies out ``names``:
    after ``decode(batch)``, ``captured[name]`` is (tokens in the batch, n_embd) float32, in batch order.
    With ``stop_early`` the graph stops once every named node is out (the callback's false answer ends
    ggml's pass): a head that reads layer 8 of 18 leaves the upper layers uncomputed, as the HF model does.
    Whatever llama.cpp then pools from the last node is never read."""

    def __init__(self, llama, names: set[str], stop_early: bool = True) -> None:
        import llama_cpp
        from llama_cpp import _internals

        ggml = _ggml_api()
        self.names, self.width = set(names), llama.n_embd()
        self.captured: dict[str, np.ndarray] = {}

        self.last_node = ""  # the last node llama.cpp offered in the latest decode (where the pass ended)

        def on_node(tensor, ask, _user_data):
            name = ggml.ggml_get_name(tensor).decode()
            if ask:
                self.last_node = name
                return name in self.names
            if name in self.names:
                out = np.empty(ggml.ggml_nbytes(tensor) // 4, dtype=np.float32)
                ggml.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, out.nbytes)
                self.captured[name] = out.reshape(-1, self.width)
                return not (stop_early and len(self.captured) == len(self.names))
            return True

        self._callback = llama_cpp.ggml_backend_sched_eval_callback(on_node)  # lives as long as the context
        params = llama.context_params
        params.cb_eval = self._callback
        self.ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)

    def decode(self, batch) -> dict[str, np.ndarray]:
        self.captured = {}
        self.ctx.kv_cache_clear()
        self.ctx.decode(batch)
        missing = self.names - set(self.captured)
        if missing:
            raise GGUFError(f"llama.cpp's graph has no nodes {sorted(missing)}: this llama.cpp names layer "
                               "outputs differently; a head reading middle layers cannot run on it")
        return self.captured
