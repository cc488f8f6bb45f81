"""make demo's job end to end on a few steps: train, reuse the finished run, score the test split."""

import json
import re
from pathlib import Path

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.data.tables import load_split, stratified_sample
from so8t_lib.workbench.pipeline import demo_gguf

FEW_STEPS = ["training.max_steps=3", "training.batch_size=4", "training.max_length=96", "training.eval_every=3",
             "training.eval_max_rows=16", "training.log_every=1"]


def test_demo_trains_then_reuses_the_run_and_writes_test_metrics(tmp_path, capsys):
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    data_dir.mkdir()
    for split, rows in (("train", 200), ("val", 60), ("test", 120)):  # a stratified slice of each split: minutes less
        stratified_sample(load_split(split), rows, 0).to_json(data_dir / f"{split}.jsonl", orient="records", lines=True,
                                                              force_ascii=False)
    args = ["--config", "configs/tiny-training.yaml", "--bootstrap", "20", "--dist", str(tmp_path / "dist"), *FEW_STEPS,
            f"training.output_dir={run_dir}", f"training.data_dir={data_dir}"]
    so8t(["demo", *args])
    report = json.loads((run_dir / "test_metrics.json").read_text(encoding="utf-8"))
    n_test = 120
    assert report["n"] == n_test and sum(map(sum, report["confusion_matrix"])) == n_test
    assert set(report["ci"]) >= {"safety_score", "macro_f1"} and report["checkpoint"].endswith("best")
    log = (run_dir / "metrics.jsonl").read_text(encoding="utf-8")
    setup = json.loads(log.splitlines()[0])  # the run's first record: where the time before step 1 went
    assert setup["kind"] == "setup" and setup["step"] == 0 and setup["model_and_data_s"] >= 0
    timings = json.loads((run_dir / "demo_timings.json").read_text(encoding="utf-8"))
    assert timings["training_steps"] == 3 and timings["training_setup"] == {k: v for k, v in setup.items() if k.endswith("_s")}
    stages = [timings[k] for k in ("training_s", "test_split_s", "gguf_ladder_s") if k in timings]
    assert len(stages) >= 2 and timings["total_s"] >= sum(stages) - 0.2
    machine = timings["machine"]  # a timing says where it was taken, and the memory it took
    assert machine["cores"] >= 1 and machine["torch_threads"] >= 1 and machine["cpu"]
    assert 0.1 < machine["peak_rss_gb"] < 64
    out = capsys.readouterr().out
    assert "safety_score" in out and "confusion" in out
    from so8t_lib.serve.router import load_router

    router = load_router(run_dir / "router.json")  # the runtime configs' escalation router, fitted on the run's split
    assert router.fitted_on["source"] == str(data_dir / "train.jsonl") and timings["router_s"] >= 0
    assert f"-> {run_dir / 'router.json'}" in out
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        assert "GGUF export skipped" in out
    else:  # the ladder and its sha256 sidecars are written where asked (never into dist/) and Q4_K_M_T8 decides
        ladder = [f"so8t-tiny-{t}.gguf" for t in ("f16", "q8_0", "q4_k_m", "q4_k_m_t8", "q4_k_s", "iq4_xs")]
        assert sorted(p.name for p in (tmp_path / "dist").iterdir()) == sorted(
            ladder + [f"{name}.sha256" for name in ladder])
        assert "so8t-tiny-q4_k_m_t8.gguf (llama.cpp)" in out  # the 4-bit rung that keeps the decisions

    refit = ["--refit-head", "--refit-rows", "300"] if "GGUF export skipped" not in out else []
    so8t(["demo", *args, *refit])  # a finished run is reused, not trained again
    assert (run_dir / "metrics.jsonl").read_text(encoding="utf-8") == log
    out = capsys.readouterr().out
    assert "holds a run" in out
    if refit:  # the 4-bit file's head was refitted to the scored model, on the run's own training rows, then decided
        from so8t_lib.export.gguf_meta import REFIT_KEY, read_metadata

        report = read_metadata(tmp_path / "dist" / "so8t-tiny-q4_k_m_t8.gguf").get(REFIT_KEY)  # written if it helps
        # the run's own training split (200 rows), not the corpus's 12,375
        assert re.search(r"so8t-tiny-q4_k_m_t8.gguf: held-out agreement with the scored model .*\(200 training rows\)",
                         out), out
        assert report is None or (report["rows"] == 200 and report["data"] == str(data_dir / "train.jsonl")
                                  and report["teacher"].startswith("scored model (so8t-tiny@"))
        assert "head_refit_s" in json.loads((run_dir / "demo_timings.json").read_text(encoding="utf-8"))
        assert out.index("held-out agreement") < out.index("so8t-tiny-q4_k_m_t8.gguf (llama.cpp)")


MAX_HEAD = ["model.head.pooling=max", "model.head.hidden_units=16"]


@pytest.mark.parametrize("args, message", [(["--refit-head", "--no-gguf"], "drop --no-gguf"),
                                           (["--refit-head", "--refit-rows", "10"], "at least 40"),
                                           (["--refit-head", *MAX_HEAD], "max-pools token states")])
def test_demo_refuses_a_refit_it_could_not_do_before_training(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        so8t(["demo", "--config", "configs/tiny-training.yaml", *args, f"training.output_dir={tmp_path / 'run'}"])
    said = capsys.readouterr().err + str(stopped.value.code)  # argparse prints; sys.exit(text) carries it
    assert message in said and not (tmp_path / "run").exists()


def test_demo_decides_from_the_recommended_4bit_rung_then_plain_q4_k_m():
    ladder = [Path(f"dist/m-{t}.gguf") for t in ("f16", "q8_0", "q4_k_m", "q4_k_m_t8", "iq4_xs")]
    assert demo_gguf(ladder).name == "m-q4_k_m_t8.gguf"
    assert demo_gguf([p for p in ladder if "t8" not in p.name]).name == "m-q4_k_m.gguf"  # an older export
    with pytest.raises(FileNotFoundError, match="q4_k_m.*so8t export"):
        demo_gguf(ladder[:2])


def test_a_negative_bootstrap_is_refused_before_any_training(tmp_path, monkeypatch, capsys):
    """--bootstrap -5 trained and scored the whole test split first, then ended in a ValueError traceback."""
    from so8t_lib.workbench import pipeline

    monkeypatch.setattr(pipeline, "train_and_calibrate", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(pipeline, "load_config", lambda *a, **k: pytest.fail("the config was read first"))
    with pytest.raises(SystemExit) as stopped:
        so8t(["demo", "--config", "configs/tiny-training.yaml", "--bootstrap", "-5", "--no-gguf",
              f"training.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "argument --bootstrap: expected a whole number, 0 or more" in err
    for bad in (-5, 2.5, True):  # a library caller (or a notebook) is refused too, before the run folder is touched
        with pytest.raises(ValueError, match="bootstrap is a number of resamples, 0 or more"):
            pipeline.run_demo("configs/tiny-training.yaml", [f"training.output_dir={tmp_path / 'run'}"], bootstrap=bad)
    assert not (tmp_path / "run").exists()
