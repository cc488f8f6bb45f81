"""What the GGUF loader accepts: so8t.* metadata of the wrong type or shape is refused at load, naming the key and
what was expected, and `so8t inspect` says so without a traceback."""

import re

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from so8t_lib.core.config import ModelConfig  # noqa: E402
from so8t_lib.export.gguf_meta import GGUFError, read_metadata, write_sha256_sidecar  # noqa: E402
from so8t_lib.export.gguf_rewrite import rewrite_gguf  # noqa: E402
from so8t_lib.export.quantize import export  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402
from so8t_lib.serve.gguf_backend import GGUFBackend  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """A tiny checkpoint's f16 file (4 layers, a linear head over the final-norm state)."""
    root = tmp_path_factory.mktemp("meta")
    torch.manual_seed(0)
    checkpoint = SO8TModel.from_config(ModelConfig(name="so8t-meta"), tokenizer).save(root / "ckpt")
    (f16,) = export(checkpoint, root / "dist", [], progress=False)
    return f16


def _hostile(source, folder, name, drop, add):
    """A copy of ``source`` with the keys ``drop`` names replaced by what ``add`` writes, sidecar renewed."""
    target = folder / f"{name}.gguf"
    rewrite_gguf(gguf.GGUFReader(source), target, drop_key=drop, add_keys=add)
    write_sha256_sidecar(target)
    return target


def _head_with(outputs, weight, shape):
    """A head whose output layer gives ``outputs`` probabilities."""
    rows = np.resize(weight.reshape(shape), (outputs, shape[1]))

    def add(writer):
        writer.add_array("so8t.head.net.1.weight.shape", [outputs, shape[1]])
        writer.add_array("so8t.head.net.1.weight", rows.reshape(-1).tolist())
        writer.add_array("so8t.head.net.1.bias.shape", [outputs])
        writer.add_array("so8t.head.net.1.bias", [0.0] * outputs)
    return add


def test_so8t_metadata_of_the_wrong_type_or_shape_is_refused_by_name(exported, tmp_path, capsys):
    """A head with 2 or 4 outputs loaded and decided (N, 2) or (N, 4); a string format or read layer raised a bare
    ValueError (a traceback in so8t inspect); read layer -1 passed inspect and 2.7 read layer 2."""
    from so8t_lib.cli import main as so8t

    f16 = exported
    reader = gguf.GGUFReader(f16)
    weight = np.asarray(reader.fields["so8t.head.net.1.weight"].contents(), dtype=np.float32)
    shape = reader.fields["so8t.head.net.1.weight.shape"].contents()
    head = lambda key: key.startswith("so8t.head.net.")  # noqa: E731
    metadata_cases = {
        "format_str": ("so8t.format", lambda w: w.add_string("so8t.format", "one"), "so8t.format 'one'"),
        "format_float": ("so8t.format", lambda w: w.add_float32("so8t.format", 1.0), "so8t.format 1.0"),
        "format_bool": ("so8t.format", lambda w: w.add_bool("so8t.format", True), "so8t.format True"),
        "format_neg": ("so8t.format", lambda w: w.add_int32("so8t.format", -5), "so8t.format -5"),
        "layers_str": ("so8t.read_layers", lambda w: w.add_array("so8t.read_layers", ["a"]), "so8t.read_layers"),
        "layers_neg": ("so8t.read_layers", lambda w: w.add_array("so8t.read_layers", [-1]), "so8t.read_layers [-1]"),
        "layers_float": ("so8t.read_layers", lambda w: w.add_array("so8t.read_layers", [2.7]), "so8t.read_layers"),
        "layers_deep": ("so8t.read_layers", lambda w: w.add_array("so8t.read_layers", [99]), "so8t.read_layers [99] are not distinct hidden states 1..4"),
        "labels_int": ("so8t.labels", lambda w: w.add_array("so8t.labels", [0, 1, 2]), "so8t.labels"),
        "temp_str": ("so8t.temperature", lambda w: w.add_string("so8t.temperature", "0.5"), "so8t.temperature"),
        "thr_nan": ("so8t.threshold", lambda w: w.add_float32("so8t.threshold", float("nan")), "so8t.threshold"),
    }
    for name, (key, add, says) in metadata_cases.items():
        path = _hostile(f16, tmp_path, name, lambda k, key=key: k == key, add)
        with pytest.raises(GGUFError, match=rf"{name}\.gguf: {re.escape(says)}"):
            read_metadata(path)
        with pytest.raises(GGUFError, match=rf"{name}\.gguf: {re.escape(says)}"):
            GGUFBackend(path)
        assert so8t(["inspect", str(path)]) == 2  # a refusal, not a crash's 1
        assert re.search(rf"^so8t inspect: .*{name}\.gguf: {re.escape(says)}", capsys.readouterr().err)
    for outputs in (2, 4):
        path = _hostile(f16, tmp_path, f"head{outputs}", head, _head_with(outputs, weight, shape))
        with pytest.raises(GGUFError, match=rf"output layer gives {outputs} probabilities, so8t.labels names 3"):
            GGUFBackend(path)
    assert "Traceback" not in capsys.readouterr().err
