"""Frozen tensors taken byte for byte from the base's own GGUF: quantizing dequantized 4-bit values again is
not lossless, taking the source's blocks is; a tensor the checkpoint changed is never taken; bad files are
refused and leave the quantized file as it was."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

import gguf  # noqa: E402
from gguf.quants import dequantize  # noqa: E402

from so8t_lib.core.config import ModelConfig  # noqa: E402
from so8t_lib.export import quantize as quantize_module  # noqa: E402
from so8t_lib.export.gguf_meta import GGUFError, read_metadata  # noqa: E402
from so8t_lib.export.gguf_rewrite import rewrite_gguf  # noqa: E402
from so8t_lib.export.quantize import export, quantize  # noqa: E402
from so8t_lib.export.source_tensors import SOURCE_KEY, holds_source_values, take_source_tensors  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402

TRAINED = "blk.3.attn_output.weight"  # the tensor the fixture pretends the checkpoint changed


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def _values(tensor):
    return dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape([int(d) for d in reversed(tensor.shape)])


@pytest.fixture(scope="module")
def files(tmp_path_factory, tokenizer):
    """A Q4_K_M "base as shipped", the f16 export of its dequantized values with one tensor changed (what a
    checkpoint trained on that base exports), and llama.cpp's Q4_K_M of that export."""
    root = tmp_path_factory.mktemp("source")
    model = SO8TModel.from_config(ModelConfig(name="so8t-src"), tokenizer)
    (f16,) = export(model.save(root / "ckpt"), root / "first", [], progress=False)
    source = quantize(f16, root / "base-q4_k_m.gguf", "Q4_K_M")
    changed = []
    for tensor in gguf.GGUFReader(str(source)).tensors:
        values = _values(tensor)
        if tensor.name == TRAINED:
            values = values + np.float32(0.01)
        data = values.astype(np.float16) if values.ndim == 2 else values.astype(np.float32)
        kind = gguf.GGMLQuantizationType.F16 if values.ndim == 2 else gguf.GGMLQuantizationType.F32
        changed.append(SimpleNamespace(name=tensor.name, data=data, tensor_type=kind))
    exported = rewrite_gguf(gguf.GGUFReader(str(f16)), root / "so8t-src-f16.gguf", changed)
    requantized = quantize(exported, root / "so8t-src-q4_k_m.gguf", "Q4_K_M")
    return SimpleNamespace(source=source, exported=exported, requantized=requantized)


def test_requantizing_the_base_loses_values_and_taking_its_blocks_does_not(files, tmp_path):
    target = tmp_path / "q4.gguf"
    target.write_bytes(files.requantized.read_bytes())
    before, source, exported = _tensors(files.requantized), _tensors(files.source), _tensors(files.exported)
    four_bit = [n for n, t in source.items() if t.tensor_type == gguf.GGMLQuantizationType.Q4_K and n != TRAINED]
    assert four_bit
    # llama.cpp does not give the source's blocks back from their dequantized (f16) values
    drift = [float(np.abs(_values(before[n]) - _values(source[n])).max()) for n in four_bit]
    assert max(drift) > 0

    result = take_source_tensors(target, files.exported, files.source)

    after = _tensors(target)
    assert set(four_bit) <= set(result.taken) and TRAINED not in result.taken
    for name in result.taken:
        assert after[name].tensor_type == source[name].tensor_type
        np.testing.assert_array_equal(np.asarray(after[name].data), np.asarray(source[name].data))
    for name in set(after) - set(result.taken):
        np.testing.assert_array_equal(np.asarray(after[name].data), np.asarray(before[name].data))
    # the taken tensors compute the export's values exactly (to its f16 rounding); requantized ones did not
    for name in four_bit:
        assert holds_source_values(np.asarray(exported[name].data), _values(after[name]))
    assert read_metadata(target)[SOURCE_KEY] == f"{len(result.taken)} of {len(after)} tensors byte for byte " \
                                                f"from {files.source.name}"
    probs = GGUFBackend(target).decide(["How do I kill a hung Python process?"])  # sidecar renewed, file loads
    assert probs.shape == (1, 3)


def test_a_file_of_other_types_is_left_untouched(files, tmp_path):
    q8 = quantize(files.exported, tmp_path / "q8.gguf", "Q8_0")
    before = q8.read_bytes()
    result = take_source_tensors(q8, files.exported, files.source)
    quantized_names = [n for n, t in _tensors(q8).items() if t.tensor_type == gguf.GGMLQuantizationType.Q8_0]
    assert quantized_names and not set(quantized_names) & set(result.taken)
    if not result.taken:
        assert q8.read_bytes() == before


def test_files_that_do_not_belong_together_are_refused_and_nothing_changes(files, tmp_path, tokenizer):
    other = SO8TModel.from_config(ModelConfig(name="so8t-two", tiny={"num_hidden_layers": 2}), tokenizer)
    (small,) = export(other.save(tmp_path / "ckpt"), tmp_path / "dist", [], progress=False)
    target = tmp_path / "q4.gguf"
    target.write_bytes(files.requantized.read_bytes())
    with pytest.raises(GGUFError, match="different tensors"):
        take_source_tensors(target, small, files.source)
    with pytest.raises(GGUFError, match="no such GGUF file"):
        take_source_tensors(target, files.exported, tmp_path / "missing.gguf")
    assert target.read_bytes() == files.requantized.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_takes_source_tensors_for_plain_rungs_only_and_not_when_asked_not_to(tokenizer, tmp_path,
                                                                                      monkeypatch, files):
    calls = []

    def record(quantized, exported, source):
        calls.append((quantized.name, exported.name, source))
        return SimpleNamespace(taken=(), total=0, summary=lambda name: "none")

    monkeypatch.setattr(quantize_module, "take_source_tensors", record)
    model = SO8TModel.from_config(ModelConfig(name="so8t-wire", lora={"layers": [3]}, gates={"layers": [3]}),
                                  tokenizer)
    ckpt = model.save(tmp_path / "ckpt")
    export(ckpt, tmp_path / "a", ["Q8_0"], progress=False)
    assert calls == []  # the tiny preset's base came from no GGUF file
    monkeypatch.setattr(quantize_module, "base_source_file", lambda config: files.source)
    export(ckpt, tmp_path / "b", ["Q8_0", "Q4_K_M_T8"], progress=False)
    assert sorted(calls) == [("so8t-wire-q4_k_m.gguf", "so8t-wire-f16.gguf", files.source),
                             ("so8t-wire-q8_0.gguf", "so8t-wire-f16.gguf", files.source)]
    calls.clear()
    export(ckpt, tmp_path / "c", ["Q4_K_M"], progress=False, source_tensors=False)
    assert calls == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-4.0, max_value=4.0, allow_nan=False, width=32), min_size=1, max_size=64),
       st.integers(min_value=0, max_value=63))
def test_f16_rounding_is_the_same_values_and_a_trained_change_is_not(values, position):
    source = np.asarray(values, dtype=np.float32)
    assert holds_source_values(source.astype(np.float16), source)
    changed = source.copy()
    index = position % len(changed)
    changed[index] += np.float32(2.0**-7) * max(1.0, abs(float(changed[index])))
    assert not holds_source_values(changed.astype(np.float16), source)
    assert not holds_source_values(source[None, :].astype(np.float16), source)  # another shape is another tensor


def test_the_benchmark_scores_both_versions_of_each_rung_on_the_same_rows(tokenizer, tmp_path, monkeypatch):
    """benchmarks/source_tensors.py on a tiny checkpoint whose "source file" is its own f16 export: the rungs
    take its f32 tensors (2-D ones differ in type), and both versions of each rung are scored."""
    import importlib.util
    import json
    from pathlib import Path

    model = SO8TModel.from_config(ModelConfig(name="so8t-bench", lora={"layers": [3]}, gates={"layers": [3]}),
                                  tokenizer)
    ckpt = model.save(tmp_path / "ckpt")
    (own_f16,) = export(ckpt, tmp_path / "own", [], progress=False)
    monkeypatch.setattr(quantize_module, "base_source_file", lambda config: own_f16)
    dist = tmp_path / "dist"
    export(ckpt, dist, ["Q4_K_M", "Q4_K_S"], progress=False)
    spec = importlib.util.spec_from_file_location(
        "source_tensors_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "source_tensors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "result.json"
    args = ["--checkpoint", str(ckpt), "--name", "so8t-bench", "--dist", str(dist), "--rows", "24", "--out", str(out)]
    result = module.main([*args, "--rungs", "Q4_K_M,Q4_K_S"])
    assert json.loads(out.read_text()) == result and result["rows"] == 24
    assert [(r["rung"], r["frozen_tensors"]) for r in result["files"]] == [
        ("Q4_K_M", "from the source file"), ("Q4_K_S", "from the source file"),
        ("Q4_K_M", "quantized again"), ("Q4_K_S", "quantized again")]
    for row in result["files"]:
        assert (row["source_tensors"] is None) == (row["frozen_tensors"] == "quantized again")
        assert 0 <= row["agreement_with_fp32"] <= 1 and row["cosine_min"] <= row["cosine_mean"] <= 1.0001
    assert not [p for p in dist.iterdir() if p.name.startswith(".source-tensors-")]  # the aside export is removed
    monkeypatch.setattr(quantize_module, "base_source_file", lambda config: None)
    plain = tmp_path / "plain"
    export(ckpt, plain, ["Q4_K_M"], progress=False)
    with pytest.raises(SystemExit, match="took no tensors from a source file"):
        module.main([*args[:4], "--dist", str(plain), "--rungs", "Q4_K_M", "--out", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()
