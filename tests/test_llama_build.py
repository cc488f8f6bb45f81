"""Refusing a llama-cpp-python build that carries its own C++ runtime: the ELF check on libraries built here
with and without -static-libstdc++, the installed build, the refusal's message, and any bytes read safely."""

import shutil
import subprocess
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_lib.export.gguf_meta import GGUFError
from so8t_lib.serve.llama_build import OWN_CXX_RUNTIME_SYMBOL, carries_own_cxx_runtime, check_llama_build

STREAMING = 'extern "C" int digits() { std::ostringstream s; s << 42L; return (int) s.str().size(); }\n'


def _static_runtime_available() -> bool:
    if shutil.which("g++") is None:
        return False
    archive = subprocess.run(["g++", "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    return Path(archive).is_file()


needs_gxx = pytest.mark.skipif(not _static_runtime_available(), reason="needs g++ and libstdc++.a")


def build_library(folder: Path, name: str, static_runtime: bool) -> Path:
    source = folder / "streaming.cpp"
    source.write_text("#include <sstream>\n" + STREAMING)
    target = folder / name
    flags = ["-static-libstdc++"] if static_runtime else []
    subprocess.run(["g++", "-shared", "-fPIC", "-O1", *flags, str(source), "-o", str(target)], check=True)
    return target


@needs_gxx
def test_a_library_linked_with_the_static_runtime_is_told_from_one_that_links_it_dynamically(tmp_path):
    carrying = build_library(tmp_path, "libcarrying.so", static_runtime=True)
    plain = build_library(tmp_path, "libplain.so", static_runtime=False)
    assert carries_own_cxx_runtime(carrying)
    assert not carries_own_cxx_runtime(plain)
    # the plain library calls the same stream code: it names the symbol, but as undefined, which is no copy
    assert OWN_CXX_RUNTIME_SYMBOL in plain.read_bytes()


def test_the_installed_llama_build_carries_no_runtime_of_its_own():
    """The CPU build make venv installs: none of its libraries is refused (the check does not misfire)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from so8t_lib.serve.llama_build import native_libraries

    libraries = native_libraries(llama_cpp)
    assert any(p.name.startswith("libllama") for p in libraries)
    assert not [p.name for p in libraries if carries_own_cxx_runtime(p)]
    check_llama_build(llama_cpp)


@needs_gxx
def test_a_build_with_a_library_carrying_the_runtime_is_refused_by_name(tmp_path):
    package = tmp_path / "llama_cpp"
    (package / "lib").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    build_library(package / "lib", "libggml-cuda.so", static_runtime=True)
    build_library(package / "lib", "libllama.so", static_runtime=False)
    fake = types.SimpleNamespace(__file__=str(package / "__init__.py"), llama_print_system_info=lambda: b"CUDA : ARCHS = 900")
    with pytest.raises(GGUFError, match=r"libggml-cuda\.so carries its own copy of the C\+\+ runtime.*nm -D"):
        check_llama_build(fake)
    (package / "lib" / "libggml-cuda.so").unlink()
    check_llama_build(fake)  # the plain library alone passes


@needs_gxx
def test_libraries_loaded_from_llama_cpp_lib_path_are_the_ones_checked(tmp_path, monkeypatch):
    """llama-cpp-python loads libllama from $LLAMA_CPP_LIB_PATH when set: a carrying build there is refused,
    naming that folder, though the package's own lib is clean."""
    package, override = tmp_path / "llama_cpp", tmp_path / "override"
    (package / "lib").mkdir(parents=True)
    override.mkdir()
    (package / "__init__.py").write_text("")
    build_library(package / "lib", "libllama.so", static_runtime=False)
    build_library(override, "libggml-cuda.so", static_runtime=True)
    fake = types.SimpleNamespace(__file__=str(package / "__init__.py"), llama_print_system_info=lambda: b"CUDA : ARCHS = 900")
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    check_llama_build(fake)  # the package's lib alone: clean
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(override))
    with pytest.raises(GGUFError, match=rf"from {override} \(\$LLAMA_CPP_LIB_PATH.*libggml-cuda\.so carries.*"
                                        rf"unset LLAMA_CPP_LIB_PATH"):
        check_llama_build(fake)
    # the folder the loaded module recorded at import wins over the environment read later
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH")
    fake.llama_cpp = types.SimpleNamespace(_base_path=override)
    with pytest.raises(GGUFError, match=r"libggml-cuda\.so carries"):
        check_llama_build(fake)


@pytest.fixture(scope="module")
def carrying_bytes(tmp_path_factory) -> bytes:
    if not _static_runtime_available():
        pytest.skip("needs g++ and libstdc++.a")
    return build_library(tmp_path_factory.mktemp("lib"), "libcarrying.so", static_runtime=True).read_bytes()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.booleans())
def test_any_bytes_are_read_without_an_error(tmp_path_factory, payload, as_elf):
    """A foreign file is read safely and carries nothing."""
    path = tmp_path_factory.mktemp("elf") / "libodd.so"
    head = b"\x7fELF\x02\x01\x01" + bytes(9) if as_elf else b""
    path.write_bytes(head + payload)
    assert carries_own_cxx_runtime(path) in (True, False)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 127), st.integers(0, 2**31)), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6),
       st.integers(0, 2**31))
def test_a_damaged_library_is_read_without_an_error(tmp_path_factory, carrying_bytes, patches, cut):
    """Overwritten header fields, section tables or symbols, or a truncated file: an answer, never an exception."""
    data = bytearray(carrying_bytes)
    for where, value in patches:
        where %= len(data)
        data[where:where + len(value)] = value
    path = tmp_path_factory.mktemp("elf") / "libdamaged.so"
    path.write_bytes(bytes(data[: max(cut % (len(data) + 1), 1)]))
    assert carries_own_cxx_runtime(path) in (True, False)
