"""A head refitted to a quantized file's states: it undoes a systematic state error, never loses held-out
agreement, keeps the exported head when nothing is wrong, and rewrites only the head keys of the file."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_lib.export.head_refit import MIN_ROWS, distill_head, refit_head
from so8t_lib.model.heads import SafetyHeadB

WIDTH = 16


def folded_head(seed: int, hidden_units: int = 0) -> SafetyHeadB:
    torch.manual_seed(seed)
    trained = SafetyHeadB(WIDTH, hidden_units=hidden_units, dropout=0.0)
    trained.train()
    trained(torch.randn(256, WIDTH) * 3 + 2)  # standardiser statistics, as training leaves them
    with torch.no_grad():
        trained.temperature.fill_(1.4)
    return SafetyHeadB.from_state_dict(trained.folded_state_dict())


def probabilities(head: SafetyHeadB, states: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return head.probabilities(head(states))


def agreement(head: SafetyHeadB, states: torch.Tensor, teacher: torch.Tensor) -> float:
    return float((probabilities(head, states).argmax(-1) == teacher.argmax(-1)).float().mean())


def distorted(states: torch.Tensor, seed: int) -> torch.Tensor:
    """A systematic error like quantization's: every feature scaled and shifted a little, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    scale = 1 + 0.3 * torch.randn(WIDTH, generator=gen)
    shift = 0.8 * torch.randn(WIDTH, generator=gen)
    return states * scale + shift + 0.05 * torch.randn(states.shape, generator=gen)


@pytest.mark.parametrize("hidden_units", [0, 8])
def test_refit_undoes_a_systematic_state_error_on_rows_it_never_saw(hidden_units):
    head = folded_head(0, hidden_units)
    clean = torch.randn(1200, WIDTH) * 3 + 2
    teacher = probabilities(head, clean)  # what fp32 decides
    quantized = distorted(clean, seed=1)  # the same rows through the quantized file
    fit, unseen = slice(0, 600), slice(600, None)
    refitted, report = refit_head(head, quantized[fit], teacher[fit])
    before = agreement(head, quantized[unseen], teacher[unseen])
    after = agreement(refitted, quantized[unseen], teacher[unseen])
    assert report["refitted"] and report["pull"] is not None
    assert before < 0.9 and after >= 0.95 and after > before, (before, after)
    assert report["holdout_agreement_exported_head"] < max(report["holdout_agreement_by_pull"].values())
    assert torch.equal(refitted.temperature, head.temperature)  # calibration stays the fp32 model's


def test_refit_keeps_the_exported_head_when_it_already_agrees():
    head = folded_head(2)
    states = torch.randn(200, WIDTH) * 3 + 2
    chosen, report = refit_head(head, states, probabilities(head, states))
    assert chosen is head and not report["refitted"] and report["pull"] is None
    assert report["holdout_agreement_exported_head"] == 1.0 == report["agreement_all_rows"]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), hidden_units=st.sampled_from([0, 4]))
def test_a_strong_pull_returns_the_same_function_on_raw_states(seed, hidden_units):
    """The first layer is fitted on standardised features and folded back: with the pull far stronger than
    the data term, the refitted head computes what the original computes, on the raw states."""
    head = folded_head(seed, hidden_units)
    states = torch.randn(64, WIDTH) * 5 - 1
    teacher = torch.softmax(torch.randn(64, 3), -1)
    student = distill_head(head, states, teacher, pull=1e6)
    with torch.no_grad():
        assert torch.allclose(student(states), head(states), atol=1e-3)


def test_bad_inputs_are_named():
    head = folded_head(3)
    states = torch.randn(MIN_ROWS, WIDTH)
    teacher = probabilities(head, states)
    with pytest.raises(ValueError, match="states must be"):
        refit_head(head, states[:, :4], teacher)
    with pytest.raises(ValueError, match="teacher probabilities must be"):
        refit_head(head, states, teacher[:-1])
    with pytest.raises(ValueError, match="NaN"):
        refit_head(head, states.clone().index_fill_(0, torch.tensor([0]), float("nan")), teacher)
    with pytest.raises(ValueError, match="probability distributions"):
        refit_head(head, states, teacher * 2)
    with pytest.raises(ValueError, match=f"at least {MIN_ROWS} rows"):
        refit_head(head, states[:-1], teacher[:-1])
    with pytest.raises(ValueError, match="folded head"):
        refit_head(SafetyHeadB(WIDTH), states, teacher)


# ----- in a GGUF file ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q4_file(tmp_path_factory, tokenizer):
    pytest.importorskip("llama_cpp")
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.export.quantize import export
    from so8t_lib.model import SO8TModel
    from so8t_lib.model.perturb import perturb_adapters

    root = tmp_path_factory.mktemp("refit")
    model = SO8TModel.from_config(ModelConfig(name="so8t-refit"), tokenizer)
    perturb_adapters(model, scale=0.3)
    model.train()
    model.safety_head(torch.randn(64, model.causal_lm.config.hidden_size) * 2 + 1)
    ckpt = model.save(root / "ckpt")
    (path,) = [p for p in export(ckpt, root / "dist", ["Q4_K_M"], progress=False) if p.name.endswith("q4_k_m.gguf")]
    return SO8TModel.load(ckpt), ckpt, path


def test_refit_rewrites_only_the_head_of_the_file(q4_file, tmp_path):
    import gguf

    from so8t_lib.data.tables import load_split, requests_and_contexts, stratified_sample
    from so8t_lib.eval.quant_refit import refit_gguf
    from so8t_lib.export.gguf_meta import GGUFError, read_metadata, verify_sha256_sidecar
    from so8t_lib.serve.gguf_backend import GGUFBackend

    _, _, original = q4_file
    path = tmp_path / original.name
    for source in (original, original.with_name(original.name + ".sha256")):  # the file and its sidecar
        (tmp_path / source.name).write_bytes(source.read_bytes())
    rows = stratified_sample(load_split("train"), 120, seed=0).to_dict("records")
    requests, contexts = requests_and_contexts(rows)
    states = GGUFBackend(path, verbose=False).decision_states(requests, contexts)
    # a teacher the file's head disagrees with (another head on the same states), so the refit must act
    other = SafetyHeadB.from_state_dict({k: torch.randn_like(v) if k.startswith("net.") else v
                                         for k, v in GGUFBackend(path).safety_head.state_dict().items()})
    teacher = probabilities(other, states)
    before = {t.name: (t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(str(path)).tensors}
    report = refit_gguf(path, requests, contexts, teacher)
    assert report["refitted"] and report["agreement_all_rows"] > report["holdout_agreement_exported_head"]
    meta = read_metadata(path)
    assert meta["so8t.head_refit"] == json.loads(json.dumps(report, sort_keys=True)) and verify_sha256_sidecar(path)
    after = {t.name: (t.tensor_type, t.data.tobytes()) for t in gguf.GGUFReader(str(path)).tensors}
    assert after == before  # the body is byte for byte the same: only the head keys changed
    served = GGUFBackend(path).decide(requests, contexts)
    assert float((served.argmax(-1) == teacher.argmax(-1)).float().mean()) == pytest.approx(
        report["agreement_all_rows"], abs=1e-4)
    assert meta["so8t.model_version"] == read_metadata(original)["so8t.model_version"]
    with pytest.raises(GGUFError, match="refitted already"):
        refit_gguf(path, requests, contexts, teacher)


def test_export_refits_the_named_rungs_and_refuses_a_rung_it_does_not_write(q4_file, tmp_path, capsys):
    from so8t_lib.cli import main as so8t
    from so8t_lib.export.gguf_meta import read_metadata

    _, ckpt, _ = q4_file
    assert so8t(["export", str(ckpt), "--out", str(tmp_path), "--quant", "Q4_K_M", "--refit-head", "Q4_K_S"]) == 2
    assert "Q4_K_S: not among the rungs" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf"))  # refused before writing anything
    so8t(["export", str(ckpt), "--out", str(tmp_path), "--quant", "Q4_K_M", "--refit-head", "q4_k_m",
          "--refit-rows", str(MIN_ROWS * 2)])
    out = capsys.readouterr().out
    assert "so8t-refit-q4_k_m.gguf: held-out agreement with fp32" in out
    meta = read_metadata(tmp_path / "so8t-refit-q4_k_m.gguf")
    if "refitted (pull" in out:
        assert meta["so8t.head_refit"]["rows"] == MIN_ROWS * 2 and meta["so8t.head_refit"]["refitted"]
    else:
        assert "kept the exported head" in out and "so8t.head_refit" not in meta


def test_head_refit_benchmark_scores_exported_and_refitted_heads_without_touching_dist(q4_file, tmp_path):
    import importlib.util
    from pathlib import Path

    from so8t_lib.data.tables import load_split, requests_and_contexts, stratified_sample
    from so8t_lib.serve.gguf_backend import GGUFBackend

    model, ckpt, path = q4_file
    spec = importlib.util.spec_from_file_location(
        "head_refit_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "head_refit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = path.read_bytes()
    out = tmp_path / "refit.json"
    result = module.main(["--checkpoint", str(ckpt), "--name", "so8t-refit", "--dist", str(path.parent),
                          "--quants", "q4_k_m", "--rows", "30", "--refit-rows", str(MIN_ROWS * 2), "--out", str(out)])
    assert json.loads(out.read_text()) == result and path.read_bytes() == before  # the ladder is left as it was
    assert result["rungs"]["fp32"]["agreement_with_fp32"] == 1.0 and result["rungs"]["q4_k_m"]["refit"]["rows"] == 80
    test = stratified_sample(load_split("test"), 30, seed=0).to_dict("records")
    reference = model.decide(*requests_and_contexts(test)).argmax(-1)
    exported = GGUFBackend(path).decide(*requests_and_contexts(test)).argmax(-1)
    assert result["rungs"]["q4_k_m"]["exported_head"]["agreement_with_fp32"] == pytest.approx(
        float((exported == reference).float().mean()), abs=1e-4)
    with pytest.raises(SystemExit, match="missing GGUF files"):
        module.main(["--checkpoint", str(ckpt), "--name", "so8t-refit", "--dist", str(path.parent),
                     "--quants", "iq4_xs", "--out", str(tmp_path / "none.json")])


def test_a_refitted_head_that_is_not_finite_never_reaches_the_file(q4_file, tmp_path):
    from so8t_lib.export.gguf_meta import GGUFError
    from so8t_lib.export.head_refit import write_head
    from so8t_lib.serve.gguf_backend import GGUFBackend

    _, _, original = q4_file
    path = tmp_path / original.name
    for source in (original, original.with_name(original.name + ".sha256")):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    head = GGUFBackend(path).safety_head
    with torch.no_grad():
        next(p for n, p in head.named_parameters() if n.startswith("net.")).fill_(float("nan"))
    before = path.read_bytes()
    with pytest.raises(GGUFError, match="refitted head holds values that are not finite; the file was left"):
        write_head(path, head, {"refitted": True})
    assert path.read_bytes() == before
