"""Where the model runs: inference.device reaches both backends, and a GPU that cannot be used is named, never
silently replaced by the CPU (the gate then fails closed like any model that cannot load)."""

import pytest

from so8t_lib.export.gguf_meta import GGUFError
from so8t_lib.serve import backends
from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.runtime import Agent


def test_cuda_on_a_machine_without_it_is_refused_by_name(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backends._torch_device("cpu") == "cpu" and backends._torch_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="torch sees no CUDA device.*inference.device: cpu"):
        backends._torch_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backends._torch_device("auto") == "cuda" and backends._torch_device("cuda") == "cuda"


@pytest.mark.parametrize("offload, device, expected", [
    (False, "cpu", 0), (False, "auto", 0), (True, "auto", -1), (True, "cuda", 20), (True, "cpu", 0)])
def test_gguf_layers_offloaded_per_device(monkeypatch, offload, device, expected):
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: offload)
    assert backends._gguf_gpu_layers(device, 20 if device == "cuda" else -1) == expected


def test_a_cpu_only_llama_cpp_asked_for_cuda_says_how_to_rebuild(monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    with pytest.raises(GGUFError, match="without a GPU backend.*GGML_CUDA=on"):
        backends._gguf_gpu_layers("cuda", -1)


def test_load_decider_passes_the_offload_to_the_gguf_backend(monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    from so8t_lib.serve import gguf_backend

    seen = {}
    monkeypatch.setattr(gguf_backend, "GGUFBackend", lambda path, **kwargs: seen.update(path=path, **kwargs) or seen)
    monkeypatch.setattr(backends, "_gguf_gpu_layers", lambda device, layers: 7 if device == "cuda" else 0)
    backends.load_decider(tmp_path / "m.gguf", device="cuda")
    assert seen["n_gpu_layers"] == 7
    with pytest.raises(ValueError, match="device must be one of"):
        backends.load_decider(tmp_path / "m.gguf", device="gpu")


def test_an_agent_told_to_use_a_missing_gpu_fails_closed_and_says_why(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": str(tmp_path / "no-such-run")}, "inference": {"device": "cuda"},
        "logging": {"audit_log": str(tmp_path / "audit.jsonl")},
        "escalation": {"queue_db": str(tmp_path / "q.sqlite"), "enable_notifications": False}})
    agent = Agent(config)
    assert "inference.device is cuda" in agent.load_error
    result = agent.run_agent(None, "経費精算の締め日はいつですか")
    assert result["decision"] == "ESCALATE" and "fail_closed" in result["flags"]
    with pytest.raises(ValueError, match="device"):
        RuntimeConfig.model_validate({"model": {"checkpoint_path": "x"}, "inference": {"device": "gpu"}})



class _PlacedModel:
    """Stands in for what SO8TModel.load returns: parameters on a device, and a record of moves."""

    model_version = "qlora@1"

    def __init__(self, device: str) -> None:
        self.device, self.moved_to = device, None

    def parameters(self):
        from types import SimpleNamespace

        yield SimpleNamespace(device=SimpleNamespace(type=self.device))

    def to(self, device):
        self.moved_to = device
        return self


@pytest.mark.parametrize("placed, device, outcome", [
    ("cuda", "cpu", "refused"), ("cuda", "cuda", None), ("cuda", "auto", None), ("cpu", "cuda", "cuda"),
    ("cpu", "auto", "cuda"), ("cpu", "cpu", None)])
def test_checkpoints_go_where_asked_and_a_4bit_base_never_silently_leaves_the_gpu(monkeypatch, tmp_path, placed,
                                                                                 device, outcome):
    import torch

    from so8t_lib.model.so8t import SO8TModel

    model = _PlacedModel(placed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "resolve_checkpoint", lambda path: tmp_path)
    monkeypatch.setattr(backends, "has_manifest", lambda folder: True)
    monkeypatch.setattr(SO8TModel, "load", classmethod(lambda cls, path: model))
    if outcome == "refused":
        with pytest.raises(RuntimeError, match="4 bits on the GPU.*inference.device: cuda or auto"):
            backends.load_decider(tmp_path, device=device)
        return
    assert backends.load_decider(tmp_path, device=device) is model and model.moved_to == outcome


@pytest.mark.parametrize("command", ["runtime", "serve"])
def test_the_gate_commands_model_flags_become_config_overrides(command, monkeypatch, capsys):
    """so8t runtime and so8t serve share their model flags, read by each command's own parser: a .gguf
    --model-path selects llama.cpp with that file, --device sets inference.device, and key=value overrides
    come first (the flags win). The config each command would load is caught before any model loads."""
    from so8t_lib.cli import main as so8t
    from so8t_lib.cli import serve as serve_cli
    from so8t_lib.core.config import ConfigError
    from so8t_lib.serve import config as config_module
    from so8t_lib.serve import runtime as runtime_module

    loaded = []

    def caught(path, overrides=()):
        loaded.append(config_module.load_runtime_config(path, overrides))
        raise ConfigError("caught before loading")

    monkeypatch.setattr(runtime_module, "load_runtime_config", caught)
    monkeypatch.setattr(serve_cli, "load_runtime_config", caught)

    def config_of(*flags):
        with pytest.raises(SystemExit, match="caught before loading"):
            so8t([command, "--config", "configs/basic.yaml", *flags])
        return loaded.pop()

    config = config_of("--model-path", "dist/x.gguf", "--device", "cpu", "inference.device=cuda")
    assert config.model.use_gguf and config.model.gguf_path == "dist/x.gguf"
    assert config.model.checkpoint_path == "dist/x.gguf"
    assert config.inference.device == "cpu"
    folder = config_of("--model-path", "checkpoints/run")
    assert folder.model.checkpoint_path == "checkpoints/run" and not folder.model.use_gguf
    assert config_of("--use-gguf").model.use_gguf
    with pytest.raises(SystemExit):  # a device the runtime does not know is refused at the flag
        so8t([command, "--device", "tpu"])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
