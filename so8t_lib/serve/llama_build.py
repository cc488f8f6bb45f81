"""Refusing llama-cpp-python builds known to crash the process, before a serving process loads a model with them.

Two such builds were met. A native build on an AMX CPU compiles ggml's AMX matmul kernels in; on
llama-cpp-python 0.3.36 they crashed (SIGSEGV in ggml_backend_amx_mul_mat) on a Q8_0 file of the tiny preset.
A CUDA build made on the lent H200's image linked its own copy of the C++ runtime into ``libggml-cuda.so`` and
exported it (2,019 ``std::`` symbols, no libstdc++ among its needed libraries); in any process that had imported
torch, every model load then crashed in ``llama_model::print_info``, whose ``std::ostream << long`` was bound
to that copy (native backtrace in benchmarks/results/gguf_cuda_h200_gdb.txt). The GGUF backend always imports
torch (SafetyHeadB is a torch module), so such a build cannot serve; it is named and refused instead.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from pathlib import Path

from ..export.gguf_meta import GGUFError

AMX_FEATURE = "AMX_INT8 = 1"
REBUILD_LLAMA = ('CMAKE_ARGS="-DGGML_NATIVE=OFF" python -m pip install --force-reinstall --no-deps --no-cache-dir '
                 "llama-cpp-python")
# std::basic_ostream<char>::_M_insert<long>: libstdc++ instantiates it once, in itself (<ostream> declares it
# extern), so a library defining it carries a copy of the runtime; it is what the crashing call was bound to
OWN_CXX_RUNTIME_SYMBOL = b"_ZNSo9_M_insertIlEERSoT_"
_ELF_MAGIC, _SHT_DYNSYM, _SHN_UNDEF = b"\x7fELF", 11, 0
LIB_PATH_ENV = "LLAMA_CPP_LIB_PATH"  # llama_cpp/llama_cpp.py loads libllama from this folder when it is set


@functools.lru_cache(maxsize=64)
def _defines_symbol(path: str, size: int, mtime_ns: int, symbol: bytes) -> bool:
    """Whether the ELF64 little-endian shared library at ``path`` defines and exports ``symbol`` (its dynamic
    symbol table; size and mtime key the cache). A file that is no such library defines nothing."""
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return False
    with data:
        if size < 64 or data[:4] != _ELF_MAGIC or data[4] != 2 or data[5] != 1:  # ELF64, little-endian only
            return False
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        if shentsize < 64:  # an ELF64 section header is 64 bytes
            return False
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
                    if shoff + i * shentsize + 64 <= size]
        for _name, kind, _flags, _addr, offset, length, link, _info, _align, entsize in sections:
            if kind != _SHT_DYNSYM or link >= len(sections) or entsize < 24:
                continue
            strings_offset, strings_length = sections[link][4], sections[link][5]
            wanted = symbol + b"\0"
            for entry in range(offset, min(offset + length, size) - entsize + 1, entsize):
                name, _info_other, shndx = struct.unpack_from("<IHH", data, entry)
                start = strings_offset + name
                if shndx != _SHN_UNDEF and name < strings_length and data[start:start + len(wanted)] == wanted:
                    return True
    return False


def carries_own_cxx_runtime(library: str | Path) -> bool:
    """Whether a shared library exports its own copy of libstdc++ (it was linked with -static-libstdc++)."""
    stat = Path(library).stat()
    return _defines_symbol(str(library), stat.st_size, stat.st_mtime_ns, OWN_CXX_RUNTIME_SYMBOL)


def _package_lib(llama_cpp) -> Path:
    return Path(llama_cpp.__file__).resolve().parent / "lib"


def library_folder(llama_cpp) -> Path:
    """The folder llama-cpp-python loads its libraries from: the one its ``llama_cpp`` module recorded at import,
    else its own rule ($LLAMA_CPP_LIB_PATH when set, else the package's ``lib``). Checking the package's ``lib``
    while the libraries come from elsewhere would pass a build that then crashes the process."""
    loaded = getattr(getattr(llama_cpp, "llama_cpp", None), "_base_path", None)
    if isinstance(loaded, (str, os.PathLike)):
        return Path(loaded).resolve()
    override = os.environ.get(LIB_PATH_ENV)
    return _package_lib(llama_cpp) if override is None else Path(override).resolve()


def native_libraries(llama_cpp) -> list[Path]:
    """The shared libraries a llama-cpp-python package loads (``library_folder``; links resolved, each once)."""
    folder = library_folder(llama_cpp)
    found = {p.resolve() for p in folder.glob("*.so*") if p.is_file()} if folder.is_dir() else set()
    return sorted(found)


def check_llama_build(llama_cpp) -> None:
    """Refuse a llama.cpp build that would crash a serving process (module docstring)."""
    info = llama_cpp.llama_print_system_info()
    info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    if AMX_FEATURE in info:
        raise GGUFError("this llama-cpp-python was built with ggml's AMX kernels (a native build on an AMX CPU), "
                        f"which crash on quantized files; rebuild it without them (make venv does, or run in the venv): "
                        f"{REBUILD_LLAMA}")
    folder = library_folder(llama_cpp)
    carrying = [p.name for p in native_libraries(llama_cpp) if carries_own_cxx_runtime(p)]
    if carrying:
        elsewhere = folder != _package_lib(llama_cpp)
        raise GGUFError(
            f"this llama-cpp-python loads its libraries from {folder}"
            f"{f' (${LIB_PATH_ENV}, not the package lib)' if elsewhere else ''}, where {', '.join(carrying)} carries "
            "its own copy of the C++ runtime (linked with -static-libstdc++); such a CUDA build crashed at every model "
            "load in a process that had imported torch, as this backend does. Rebuild llama-cpp-python so that its "
            "libraries use the system's libstdc++ (afterwards `nm -D --defined-only FILE | grep "
            f"{OWN_CXX_RUNTIME_SYMBOL.decode()}` prints nothing for each file in {folder}), or use the CPU build "
            f"that make venv installs{f' and unset {LIB_PATH_ENV}' if elsewhere else ''}")
