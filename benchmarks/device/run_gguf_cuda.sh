#!/bin/bash
# On a lent CUDA machine (see prepare_gguf_cuda.sh): install the carried wheels, build llama-cpp-python with CUDA
# for the H200 (sm_90; FlashAttention kernels left out to save build time), show whether its libraries carry
# their own C++ runtime (the cause of the crash in benchmarks/results/gguf_cuda_h200_gdb.txt), then run
# benchmarks/gguf_cuda.py. EXTRA_CMAKE_ARGS adds to the build's CMAKE_ARGS (to try a fix for that crash).
export PYTHONUNBUFFERED=1 LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
if [ ! -d /tmp/site/llama_cpp/lib ]; then
    mkdir -p /tmp/llb && tar xzf .gpu/llama_cpp_python-*-pruned.tar.gz -C /tmp/llb
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_CUDA_NCCL=OFF ${EXTRA_CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python3 -m pip install -v --no-deps --no-build-isolation --no-cache-dir \
        --target /tmp/site /tmp/llb/llama_cpp_python-* > "$OUT/build.log" 2>&1
    echo "build rc $? after $(( $(date +%s) - start )) s"
fi
for lib in /tmp/site/llama_cpp/lib/*.so.0; do
    echo "$(basename "$lib"): $(nm -D --defined-only "$lib" | grep -c _ZNSo9_M_insertIlEERSoT_) own copy of std::ostream::_M_insert<long>"
done
left=$(( 470 - ($(date +%s) - start) ))
python3 -X faulthandler benchmarks/gguf_cuda.py --out "$OUT/gguf_cuda_h200.json" --budget-s "$left" > "$OUT/run.log" 2>&1
echo "benchmark rc $? after $(( $(date +%s) - start )) s"
grep -v "^llama_\|^load\|^print_info\|^warning\|^\.\+$" "$OUT/run.log" | tail -30
