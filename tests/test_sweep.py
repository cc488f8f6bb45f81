"""Sweeps: the grid × seeds runs through papermill, failures are recorded, completed runs are skipped."""

import json

import nbformat
import pandas as pd
import pytest

from so8t_lib.core.config import ConfigError
from so8t_lib.workbench import sweep, sweep_runs

pytest.importorskip("papermill")


TOY_CODE = ("import json, pathlib\n"
            "if x == 3:\n    raise ValueError('x=3 is broken on purpose')\n"
            "pathlib.Path(output_dir, 'metrics.json').write_text(json.dumps({'score': x * 10 + seed, 'nested': {'a': x}}))")


def _notebook(path, code: str = TOY_CODE):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("x = 1\nseed = 0\noutput_dir = '.'\nconfig = tag = lr = None",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_sweep_runs_records_failures_and_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    (tmp_path / "spec.yaml").write_text("name: toy\nnotebook: nb.ipynb\ngrid: {x: [1, 2, 3]}\nseeds: [0, 1]\n")
    spec = sweep.load_spec(tmp_path / "spec.yaml")
    assert len(spec.runs()) == 6
    frame = sweep.run_sweep(spec, workers=2, runs_root=tmp_path / "runs")
    assert len(frame) == 6 and sorted(frame["status"]) == ["failed"] * 2 + ["ok"] * 4
    ok = frame[frame["status"] == "ok"].sort_values(["x", "seed"])
    assert list(ok["metric.score"]) == [10, 11, 20, 21] and list(ok["metric.nested.a"]) == [1, 1, 2, 2]
    failed = json.loads((tmp_path / "runs" / "toy" / "x=3__seed=0" / "status.json").read_text())
    assert "broken on purpose" in failed["error"]
    summary = pd.read_csv(tmp_path / "runs" / "toy" / "summary.csv")
    assert len(summary) == 6

    done = tmp_path / "runs" / "toy" / "x=1__seed=0" / "output.ipynb"
    stamp = done.stat().st_mtime_ns
    sweep.run_sweep(spec, workers=1, runs_root=tmp_path / "runs")  # resume: finished runs are not redone
    assert done.stat().st_mtime_ns == stamp


def test_bad_specs_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    cases = {
        "name: a\nnotebook: missing.ipynb\n": "not found",
        "name: a\nnotebook: nb.ipynb\ngrid: {x: []}\n": "non-empty list",
        "name: a\nnotebook: nb.ipynb\ngird: {x: [1]}\n": "unknown key",
        "name: a\nnotebook: nb.ipynb\ngrid: {seed: [1]}\n": "set by the sweep",
    }
    for text, message in cases.items():
        (tmp_path / "s.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            sweep.load_spec(tmp_path / "s.yaml")


def test_training_notebook_through_a_small_ablation_sweep(tmp_path):
    from pathlib import Path

    from so8t_lib.data.tables import load_split

    root = Path(__file__).resolve().parents[1]
    rows = tmp_path / "rows.jsonl"
    load_split("test").groupby("label").head(4).to_json(rows, orient="records", lines=True, force_ascii=False)
    spec = sweep.SweepSpec(
        name="mini_ablation", notebook=root / "notebooks" / "01_train_so8t.ipynb",
        params={"config": str(root / "configs" / "tiny-training.yaml"), "max_steps": 2, "eval_data": str(rows),
                "overrides": [f"training.data_dir={root / 'data' / 'so8t_safety'}", "training.batch_size=4",
                              "training.max_length=96", "training.eval_every=2", "training.eval_max_rows=16",
                              "training.calibrate_temperature=false", "training.log_every=1"]},
        grid={"gate_order": ["safe_first", "none"]}, seeds=[0],
    )
    frame = sweep.run_sweep(spec, workers=1, runs_root=tmp_path / "runs")
    assert list(frame["status"]) == ["ok", "ok"], frame
    assert set(frame["metric.gate_order"]) == {"safe_first", "none"} and (frame["metric.steps"] == 2).all()
    assert frame["metric.macro_f1"].notna().all()
    assert (tmp_path / "runs" / "mini_ablation" / "gate_order=none__seed=0" / "curves.png").is_file()


def test_parallel_kernels_share_the_cores_and_the_environment_is_restored(monkeypatch):
    for name in sweep.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 8)
    with sweep.share_cores(4) as threads:
        assert threads == 2 and all(sweep.os.environ[n] == "2" for n in sweep.THREAD_VARIABLES)
    assert not any(n in sweep.os.environ for n in sweep.THREAD_VARIABLES)
    with sweep.share_cores(1) as threads:  # one worker keeps torch's own default
        assert threads is None and "OMP_NUM_THREADS" not in sweep.os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's explicit choice wins
    with sweep.share_cores(4) as threads:
        assert threads is None and sweep.os.environ["OMP_NUM_THREADS"] == "3"


def test_a_missing_notebook_kernel_falls_back_to_this_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    nb = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
    nb.metadata["kernelspec"]["name"] = "no-such-kernel"
    nbformat.write(nb, tmp_path / "nb.ipynb")
    (tmp_path / "spec.yaml").write_text("name: toy\nnotebook: nb.ipynb\n")
    spec = sweep.load_spec(tmp_path / "spec.yaml")
    assert sweep.resolve_kernel(spec) == "python3" and "no-such-kernel" in capsys.readouterr().err
    spec.kernel = "also-missing"  # named in the spec: an error that says how to get one
    with pytest.raises(ConfigError, match="also-missing.*not installed"):
        sweep.resolve_kernel(spec)


def test_every_committed_spec_loads_and_each_run_has_a_valid_config(monkeypatch):
    from pathlib import Path

    from so8t_lib.train.trainer import run_config

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    specs = sorted((root / "experiments").glob("*.yaml"))
    assert specs
    for path in specs:
        assert "so8t sweep" in path.read_text(encoding="utf-8"), f"{path.name}: header names its command"
        spec = sweep.load_spec(path)
        for _, params in spec.runs():  # exactly what notebook 01 does with its parameters
            config = run_config(params["config"], params["gate_order"], params["pet"], params["max_steps"],
                                params["seed"], "experiments/runs/x", params.get("overrides", []))
            assert config.model.gates.order == params["gate_order"] and config.training.max_steps == params["max_steps"]
            assert config.loss.pet.enabled == params["pet"] and config.model.seed == config.training.seed == params["seed"]


def _spec_file(tmp_path, params: str, grid: str = "") -> str:
    (tmp_path / "spec.yaml").write_text(f"name: toy\nnotebook: nb.ipynb\nparams: {params}\n{grid}seeds: [0]\n")
    return str(tmp_path / "spec.yaml")


def test_changed_params_make_finished_runs_stale_and_the_exit_status_says_what_happened(tmp_path, monkeypatch, capsys):
    """max_steps 100 -> 300 used to skip every run and report the old results; a failed run exited 0."""
    from so8t_lib.cli import sweep as cli

    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    runs = ["--runs-root", str(tmp_path / "runs")]
    summary = tmp_path / "runs" / "toy" / "summary.csv"
    assert cli.main([_spec_file(tmp_path, "{x: 1}"), *runs]) == 0
    assert list(pd.read_csv(summary)["metric.score"]) == [10]

    assert cli.main([_spec_file(tmp_path, "{x: 2}"), *runs]) == 2  # refused before anything ran
    err = capsys.readouterr().err
    assert "seed=0: params.yaml differs: x 1 -> 2" in err and "--rerun-stale" in err
    assert list(pd.read_csv(summary)["metric.score"]) == [10]
    assert cli.main([_spec_file(tmp_path, "{x: 2}"), *runs, "--rerun-stale"]) == 0
    assert list(pd.read_csv(summary)["metric.score"]) == [20]

    assert cli.main([_spec_file(tmp_path, "{x: 3}"), *runs, "--rerun-stale"]) == 1  # x=3 fails: make stops
    assert list(pd.read_csv(summary)["status"]) == ["failed"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run_sweep", interrupted)
    assert cli.main([_spec_file(tmp_path, "{x: 1}"), *runs]) == 130


def test_run_state_compares_params_and_notebook_code_and_names_unreadable_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    digest = sweep_runs.notebook_digest(tmp_path / "nb.ipynb")
    run = tmp_path / "runs" / "toy" / "seed=0"
    run.mkdir(parents=True)
    (run / "params.yaml").write_text("seed: 0\nx: 1\n")
    (run / "metrics.json").write_text('{"score": 10}')
    (run / "status.json").write_text('{"status": "ok"}')  # written before the hash was recorded: still done
    assert sweep_runs.run_state(run, {"x": 1, "seed": 0}, digest) == ("done", "")
    assert sweep_runs.run_state(run, {"x": 1.0, "seed": 0}, digest)[0] == "stale"  # 1.0 is not the 1 it ran with
    (run / "status.json").write_text(json.dumps({"status": "ok", "notebook_sha256": "0" * 16}))
    state, why = sweep_runs.run_state(run, {"x": 1, "seed": 0}, digest)
    assert state == "stale" and "notebook's code changed" in why
    spec = sweep.load_spec(_spec_file(tmp_path, "{x: 1}"))
    with pytest.raises(sweep_runs.StaleRunsError, match="seed=0: the notebook's code changed"):
        sweep_runs.check_stale(spec, tmp_path / "runs" / "toy")

    (run / "status.json").write_text('{"status": "o')  # a crash mid-write: rerun, and say which file
    state, why = sweep_runs.run_state(run, {"x": 1, "seed": 0}, digest)
    assert state == "todo" and str(run / "status.json") in why
    (run / "status.json").write_text('{"status": "ok"}')
    (run / "metrics.json").write_text("{")
    frame = sweep.summarize(tmp_path / "runs" / "toy")
    assert list(frame["status"]) == ["unreadable"] and str(run / "metrics.json") in capsys.readouterr().err


def test_parameter_sets_that_would_share_a_run_name_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    (tmp_path / "spec.yaml").write_text('name: c\nnotebook: nb.ipynb\ngrid: {tag: ["a b", "a-b"]}\n')
    with pytest.raises(ConfigError, match=r'share the folder tag=a-b__seed=0: \{"tag": "a b".*\{"tag": "a-b"'):
        sweep.load_spec(tmp_path / "spec.yaml")
    (tmp_path / "spec.yaml").write_text("name: c\nnotebook: nb.ipynb\ngrid: {lr: [0.001, 0.01]}\n")
    assert [n for n, _ in sweep.load_spec(tmp_path / "spec.yaml").runs()] == ["lr=0.001__seed=0", "lr=0.01__seed=0"]


def test_ctrl_c_cancels_queued_runs_interrupts_the_running_notebook_and_writes_the_summary(tmp_path, monkeypatch):
    """Ctrl-C used to wait for every queued run (the executor's shutdown) and write no summary."""
    import signal
    import threading
    import time

    monkeypatch.chdir(tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("seed = 0\noutput_dir = '.'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import pathlib, time\npathlib.Path(output_dir, 'started').touch()\n"
                                          "time.sleep(30)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "nb.ipynb")
    spec = sweep.SweepSpec(name="slow", notebook=tmp_path / "nb.ipynb", seeds=[0, 1, 2])
    started = tmp_path / "runs" / "slow" / "seed=0" / "started"
    pressed = []

    def press_ctrl_c():
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pressed.append(time.monotonic())
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=press_ctrl_c, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(spec, workers=1, runs_root=tmp_path / "runs")
    assert time.monotonic() - pressed[0] < 20  # not the 30 s sleep, nor the two queued runs
    status = json.loads((tmp_path / "runs" / "slow" / "seed=0" / "status.json").read_text())
    assert status["status"] == "interrupted" and "KeyboardInterrupt" in status["error"]
    assert not (tmp_path / "runs" / "slow" / "seed=1").exists()  # queued: cancelled, never started
    summary = pd.read_csv(tmp_path / "runs" / "slow" / "summary.csv")  # every run of the spec: "1 of 3", not "1 of 1"
    assert list(summary["status"]) == ["interrupted", "not run", "not run"] and list(summary["seed"]) == [0, 1, 2]


def test_an_edited_config_file_makes_its_runs_stale_finished_or_not(tmp_path, monkeypatch, capsys):
    """params.yaml holds only the config's path: an edited config used to leave the old results current, and
    an interrupted run then failed on every resume ("trained under another config"), never counted stale."""
    from so8t_lib.cli import sweep as cli

    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    (tmp_path / "base.yaml").write_text("training: {lr: 0.001}\n")
    (tmp_path / "cfg.yaml").write_text("extends: base.yaml\nmodel: {seed: 0}\n")
    runs = ["--runs-root", str(tmp_path / "runs")]
    assert cli.main([_spec_file(tmp_path, "{x: 1, config: cfg.yaml}"), *runs]) == 0
    run = tmp_path / "runs" / "toy" / "seed=0"
    digest = sweep_runs.notebook_digest(tmp_path / "nb.ipynb")
    params = {"x": 1, "config": "cfg.yaml", "seed": 0}
    (tmp_path / "cfg.yaml").write_text("# a comment changes no setting\nextends: base.yaml\nmodel: {seed: 0}\n")
    assert sweep_runs.run_state(run, params, digest) == ("done", "")

    (tmp_path / "base.yaml").write_text("training: {lr: 0.1}\n")  # the file it extends
    state, why = sweep_runs.run_state(run, params, digest)
    assert state == "stale" and "config cfg.yaml" in why
    assert cli.main([_spec_file(tmp_path, "{x: 1, config: cfg.yaml}"), *runs]) == 2
    assert "seed=0: the file(s) its parameters name changed" in capsys.readouterr().err
    assert cli.main([_spec_file(tmp_path, "{x: 1, config: cfg.yaml}"), *runs, "--rerun-stale"]) == 0
    assert sweep_runs.run_state(run, params, digest) == ("done", "")

    (run / "status.json").write_text('{"status": "interrupted"}')  # unfinished: its checkpoint would resume
    assert sweep_runs.run_state(run, params, digest)[0] == "todo"
    (tmp_path / "cfg.yaml").write_text("extends: base.yaml\nmodel: {seed: 1}\n")
    assert sweep_runs.run_state(run, params, digest)[0] == "stale"  # so --rerun-stale clears it


def test_a_torn_metrics_json_is_rerun_not_done(tmp_path, monkeypatch, capsys):
    """status ok with a torn metrics.json used to count as done forever (only its existence was checked)."""
    from so8t_lib.cli import sweep as cli

    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb")
    args = [_spec_file(tmp_path, "{x: 1}"), "--runs-root", str(tmp_path / "runs")]
    assert cli.main(args) == 0
    metrics = tmp_path / "runs" / "toy" / "seed=0" / "metrics.json"
    metrics.write_text(metrics.read_text()[:7])
    state, why = sweep_runs.run_state(metrics.parent, {"x": 1, "seed": 0}, sweep_runs.notebook_digest(tmp_path / "nb.ipynb"))
    assert state == "todo" and str(metrics) in why
    capsys.readouterr()
    assert cli.main(args) == 0
    assert json.loads(metrics.read_text())["score"] == 10 and f"rerunning seed=0 ({metrics}" in capsys.readouterr().err


def test_a_run_whose_checkpoint_cannot_resume_is_stale_not_failed_forever(tmp_path, monkeypatch, capsys):
    """A rebuilt corpus (or another base, or new code defaults) left an interrupted run's checkpoint unresumable:
    every invocation failed it again ('trained on other data'), and --rerun-stale could not clear it (it was todo)."""
    from so8t_lib.cli import sweep as cli

    monkeypatch.chdir(tmp_path)
    _notebook(tmp_path / "nb.ipynb", "import json, pathlib\nfrom so8t_lib.core.checkpoint import ResumeMismatch\n"
              "out = pathlib.Path(output_dir)\n"
              "if (out / 'last').is_dir():\n    raise ResumeMismatch(f'{out}/last: the training rows changed')\n"
              "(out / 'metrics.json').write_text(json.dumps({'score': x}))")
    args = [_spec_file(tmp_path, "{x: 1}"), "--runs-root", str(tmp_path / "runs")]
    run = tmp_path / "runs" / "toy" / "seed=0"
    run.mkdir(parents=True)
    (run / "last").mkdir()  # an interrupted run's checkpoint, made before the data changed
    assert cli.main(args) == 1
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["error_type"] == "ResumeMismatch"
    state, why = sweep_runs.run_state(run, {"x": 1, "seed": 0}, sweep_runs.notebook_digest(tmp_path / "nb.ipynb"))
    assert state == "stale" and "the training rows changed" in why
    capsys.readouterr()
    assert cli.main([*args, "--rerun-stale"]) == 0  # the folder goes, the run starts afresh
    assert json.loads((run / "metrics.json").read_text()) == {"score": 1} and not (run / "last").exists()
