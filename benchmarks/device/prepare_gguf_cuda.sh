#!/bin/bash
# Fills the git-ignored folder .gpu/ with what benchmarks/device/run_gguf_cuda.sh needs on a lent GPU machine that
# has no package registry: llama-cpp-python's sdist pruned to what a CUDA build compiles (~4 MB instead of 77),
# and wheels of the project's dependencies its image lacks (Python 3.12). Run here, in the repository root:
#   bash benchmarks/device/prepare_gguf_cuda.sh
# then call the device tool with carry [".gpu", "data/so8t_safety/train.jsonl"] and command
#   bash benchmarks/device/run_gguf_cuda.sh
set -euo pipefail
LLAMA=0.3.36
PY=${PYTHON:-.venv/bin/python}
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl
work=$(mktemp -d)
"$PY" -m pip download -q --no-deps --no-binary=:all: "llama_cpp_python==$LLAMA" -d "$work"
tar xzf "$work/llama_cpp_python-$LLAMA.tar.gz" -C "$work"
src="$work/llama_cpp_python-$LLAMA" v="$work/llama_cpp_python-$LLAMA/vendor/llama.cpp"
rm -rf "$src/.git" "$src/examples" "$src/docs" "$src/docker" "$v/models" "$v/docs" "$v/benches" "$v/tests" \
       "$v/examples" "$v/scripts" "$v/conversion" "$v/media" "$v/gguf-py" "$v/tools/ui" "$v/tools/server" \
       "$v/tools/tts" "$v/tools/mtmd"
for backend in virtgpu cann openvino webgpu et metal hexagon sycl vulkan opencl rpc musa hip zdnn blas kompute; do
    rm -rf "$v/ggml/src/ggml-$backend"
done
tar czf ".gpu/llama_cpp_python-$LLAMA-pruned.tar.gz" -C "$work" "llama_cpp_python-$LLAMA"
rm -rf "$work"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
    "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" \
    "pydantic_core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    annotated-types typing-inspection "gguf==$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')" \
    diskcache
du -sh .gpu
