"""The fast GGUF reader against gguf's own: every key, value type, value and tensor equal on files our
export and llama.cpp's quantizer write and on random key sets; damaged files are refused with GGUFError,
never read as something else; what it does not read (big-endian) goes to gguf.GGUFReader."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")

from so8t_lib.core.config import ModelConfig  # noqa: E402
from so8t_lib.export.gguf_file import GGUFFile, differences_from_gguf_reader, open_gguf  # noqa: E402
from so8t_lib.export.gguf_meta import GGUFError, read_metadata  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402

VT = gguf.GGUFValueType


def assert_same_as_gguf_reader(path):
    assert differences_from_gguf_reader(path) == []
    return GGUFFile(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """The tiny model's f16 export (tokenizer arrays, so8t.* keys, f16/f32 tensors) and its Q4_K_M."""
    pytest.importorskip("llama_cpp")
    from so8t_lib.export.quantize import export

    root = tmp_path_factory.mktemp("gguf-file")
    model = SO8TModel.from_config(ModelConfig(name="so8t-read"), tokenizer)
    files = export(model.save(root / "ckpt"), root / "dist", ["Q4_K_M"], progress=False)
    return files


def test_the_projects_files_read_as_gguf_reads_them(exported):
    for path in exported:
        ours = assert_same_as_gguf_reader(path)
        assert not ours.tensors[0].data.flags.writeable  # mapped read-only: nothing can change the file
        assert len(ours.fields["tokenizer.ggml.tokens"].contents()) == 8192
    assert read_metadata(exported[-1])["tensor_count"] == len(GGUFFile(exported[-1]).tensors)


def test_keys_not_wanted_are_stepped_over_and_the_tensors_still_found(exported):
    full, some = GGUFFile(exported[0]), GGUFFile(exported[0], want=lambda key: key.startswith("so8t."))
    assert set(some.fields) == {k for k in full.fields if k.startswith("so8t.") or k == "general.alignment"}
    assert all(some.fields[k].contents() == full.fields[k].contents() for k in some.fields)
    assert [(t.name, t.shape) for t in some.tensors] == [(t.name, t.shape) for t in full.tensors]
    np.testing.assert_array_equal(some.tensors[-1].data, full.tensors[-1].data)


SCALARS = {VT.UINT8: st.integers(0, 255), VT.INT8: st.integers(-128, 127), VT.UINT16: st.integers(0, 65535),
           VT.INT16: st.integers(-32768, 32767), VT.UINT32: st.integers(0, 2**32 - 1),
           VT.INT32: st.integers(-2**31, 2**31 - 1), VT.UINT64: st.integers(0, 2**64 - 1),
           VT.INT64: st.integers(-2**63, 2**63 - 1), VT.BOOL: st.booleans(),
           VT.FLOAT32: st.floats(width=32, allow_nan=False), VT.FLOAT64: st.floats(allow_nan=False),
           VT.STRING: st.text(max_size=20)}
values = st.one_of(
    [st.tuples(st.just(kind), st.just(None), strategy) for kind, strategy in SCALARS.items()]
    + [st.tuples(st.just(VT.ARRAY), st.just(kind), st.lists(strategy, min_size=1, max_size=12))
       for kind, strategy in SCALARS.items()])  # gguf writes no empty array


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.text(st.characters(min_codepoint=33, max_codepoint=0x30ff), min_size=1, max_size=12),
                       values, max_size=8),
       st.lists(st.tuples(st.integers(1, 5), st.integers(1, 40)), max_size=3))
def test_random_keys_and_tensors_read_as_gguf_reads_them(tmp_path, keys, shapes):
    path = tmp_path / "random.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, (kind, sub, value) in keys.items():
        if key == "general.architecture":
            continue
        writer.add_key_value(f"x.{key}", value, kind, sub_type=sub)
    for index, shape in enumerate(shapes):
        dtype = np.float16 if index % 2 else np.float32
        writer.add_tensor(f"t{index}", np.arange(np.prod(shape), dtype=dtype).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_same_as_gguf_reader(path)


def test_a_damaged_file_is_refused_at_any_cut_and_a_foreign_one_by_its_magic(exported, tmp_path):
    whole = exported[-1].read_bytes()
    ours = GGUFFile(exported[-1])
    last = max(ours.data_offset + int(np.asarray(t.data).nbytes) for t in ours.tensors)
    cut = tmp_path / "cut.gguf"
    for end in sorted({0, 3, 8, 23, 200, 5000, ours.data_offset - 1, ours.data_offset + 10, last - 1}):
        cut.write_bytes(whole[:end])
        with pytest.raises(GGUFError):
            open_gguf(cut)
        with pytest.raises(GGUFError):
            read_metadata(cut)
    cut.write_bytes(b"GGML" + whole[4:4096])
    with pytest.raises(GGUFError, match="not a GGUF file"):
        GGUFFile(cut)
    with pytest.raises(GGUFError, match="no such GGUF file"):
        open_gguf(tmp_path / "missing.gguf")
    # a string length that points past the end of the file
    bad = bytearray(whole[:4096])
    bad[24:32] = (2**62).to_bytes(8, "little")  # the first key's name length
    cut.write_bytes(bytes(bad))
    with pytest.raises(GGUFError, match="damaged or truncated"):
        GGUFFile(cut)


def test_a_big_endian_file_goes_to_gguf_reader_and_reads_the_same(tmp_path):
    path = tmp_path / "big.gguf"
    writer = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_string("x.name", "big")
    writer.add_array("x.values", [1, 2, 3])
    writer.add_tensor("t", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = open_gguf(path)
    assert isinstance(reader, gguf.GGUFReader)
    assert reader.fields["x.name"].contents() == "big" and reader.fields["x.values"].contents() == [1, 2, 3]


def test_the_open_benchmark_finds_both_readers_alike_and_the_ladder_the_same_files(exported, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gguf_open", root / "benchmarks" / "gguf_open.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "open.json"
    checkpoint = exported[0].parents[1] / "ckpt"
    module.main([*map(str, exported), "--ladder", str(checkpoint), "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["same_as_gguf_reader"] for r in result["opens"]] == [True, True]
    assert all(r["gguf_reader_s"] > 0 and r["gguf_file_s"] > 0 for r in result["opens"])
    ladder = result["ladder"]  # every open through GGUFReader, then through GGUFFile: the same bytes written
    assert ladder["same_files"] and len(ladder["files"]) == 6 and ladder["speedup"] > 0
    assert result["backend_start"]["file"].endswith("q4_k_m.gguf")


def test_a_header_that_breaks_the_parser_in_other_ways_is_still_a_named_gguf_error(tmp_path):
    """A quantized tensor without dimensions (IndexError) or an alignment that is a list (TypeError) escaped as
    tracebacks that did not name the file."""
    import struct

    import gguf

    def kv(name: str, value: str) -> bytes:
        n, v = name.encode(), value.encode()
        return struct.pack("<Q", len(n)) + n + struct.pack("<IQ", 8, len(v)) + v

    def build(path, kvs, tensors):
        out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
        for name, dims, kind, offset in tensors:
            out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(dims)) \
                + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", kind, offset)
        path.write_bytes(out + b"\0" * (-len(out) % 32 + 64))

    no_dims = tmp_path / "no_dims.gguf"
    build(no_dims, [kv("general.architecture", "qwen2")], [("t", (), int(gguf.GGMLQuantizationType.Q8_0), 0)])
    name = b"general.alignment"
    listed = tmp_path / "listed.gguf"
    build(listed, [kv("general.architecture", "qwen2"),
                   struct.pack("<Q", len(name)) + name + struct.pack("<IIQI", 9, 4, 1, 32)], [])
    for path in (no_dims, listed):
        with pytest.raises(GGUFError, match=f"{path.name}: damaged or truncated GGUF"):
            read_metadata(path)


def test_a_rewritten_file_keeps_the_alignment_its_header_declares(tmp_path):
    import gguf

    from so8t_lib.export.gguf_file import open_gguf
    from so8t_lib.export.gguf_rewrite import rewrite_gguf

    source = tmp_path / "aligned.gguf"
    writer = gguf.GGUFWriter(str(source), "qwen2")
    writer.add_custom_alignment(64)
    writer.add_string("so8t.note", "xxxxx")
    writer.add_tensor("a", np.arange(24, dtype=np.float32).reshape(2, 12))
    writer.add_tensor("b", np.ones((4, 12), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    rewrite_gguf(open_gguf(source), tmp_path / "again.gguf")
    again = open_gguf(tmp_path / "again.gguf")
    assert np.array_equal(next(t for t in again.tensors if t.name == "b").data, np.ones((4, 12), np.float32))
