#!/bin/bash
# Reproduces on a CPU the hazard that crashed the CUDA llama.cpp build on the H200 (docs/benchmarks.md,
# "llama.cpp on a GPU"): libcarry.so is linked with -static-libstdc++ (it carries and exports its own C++ runtime,
# as that libggml-cuda.so did); libuser.so needs it, as libllama needs ggml, and formats a long into a stream.
# Called in a bare Python, then in one that imported torch first. Needs g++ and libstdc++.a.
#   bash benchmarks/cxx_runtime_probe.sh [PYTHON]
set -euo pipefail
PY=${1:-.venv/bin/python}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '#include <sstream>\nextern "C" int carry_digits() { std::ostringstream s; s << 7L; return (int) s.str().size(); }\n' > "$dir/carry.cpp"
printf '#include <sstream>\nextern "C" int carry_digits();\nextern "C" int user_digits() { std::ostringstream s; s << 123456L; return (int) s.str().size() + 0 * carry_digits(); }\n' > "$dir/user.cpp"
g++ -shared -fPIC -O1 -static-libstdc++ "$dir/carry.cpp" -o "$dir/libcarry.so"
g++ -shared -fPIC -O1 "$dir/user.cpp" -L"$dir" -lcarry -Wl,-rpath,'$ORIGIN' -o "$dir/libuser.so"
for first in "pass" "import torch"; do
    "$PY" -c "$first
import ctypes; print('[$first] digits of 123456 written by libuser.so:', ctypes.CDLL('$dir/libuser.so').user_digits())"
done
