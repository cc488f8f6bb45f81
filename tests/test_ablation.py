"""Ablation statistics against hand-computed cases."""

import math

import numpy as np
import pandas as pd
import pytest

from so8t_lib.workbench import ablation


def test_t_interval_by_hand():
    mean, low, high = ablation.t_interval([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)  # sd = 1, t(0.975, 2) = 4.302653
    assert mean == 2.0 and low == pytest.approx(2 - half, rel=1e-4) and high == pytest.approx(2 + half, rel=1e-4)
    assert math.isnan(ablation.t_interval([5.0])[1])


def test_t_interval_stays_a_t_interval_past_thirty_degrees_of_freedom():
    """32 seeds: t(0.975, 31) = 2.0395, not the normal 1.96 a 30-row table fell back to."""
    values = np.arange(32, dtype=float)
    mean, low, high = ablation.t_interval(values)
    half = 2.0395 * values.std(ddof=1) / math.sqrt(32)
    assert low == pytest.approx(mean - half, rel=1e-4) and high == pytest.approx(mean + half, rel=1e-4)


@pytest.mark.parametrize("t, df", [(12.706, 1), (4.303, 2), (3.182, 3), (2.776, 4), (2.571, 5), (2.228, 10), (2.042, 30)])
def test_t_p_value_at_the_tabulated_95_percent_points(t, df):
    assert ablation.t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)


def test_sign_flip_p_values_are_exact():
    assert ablation.sign_flip_p_value([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)  # only all-+ and all-- reach it
    assert ablation.sign_flip_p_value([1, -1, 1, -1]) == 1.0


def test_identical_differences_do_not_make_a_paired_t_test_certain():
    # two seeds that flip the same three test rows: the spread is unknown, not zero
    assert ablation.paired_t_p_value([0.024, 0.024]) == pytest.approx(0.5)
    assert ablation.paired_t_p_value([0.0, 0.0]) == 1.0
    assert ablation.paired_t_p_value([0.1, 0.1, 0.1, 0.1, 0.1, 0.1]) == pytest.approx(2 / 64)


def test_analyze_pairs_seeds_within_pet_and_reports_a_real_effect():
    rows = []
    rng = np.random.default_rng(0)
    for seed in range(5):
        noise = rng.normal(0, 0.001)
        for order, shift in [("none", 0.0), ("safe_first", 0.05), ("commuting", 0.0)]:
            for pet in (True, False):  # safe_first's gain varies a little by seed: a spread the t-test can use
                jitter = rng.normal(0, 0.002) if order == "safe_first" else 0.0
                rows.append({"gate_order": order, "pet": pet, "seed": seed, "status": "ok",
                             "metric.macro_f1": 0.6 + shift + jitter + noise + 0.01 * seed})
    table = ablation.analyze(pd.DataFrame(rows), ["macro_f1"])
    sf = table[(table.gate_order == "safe_first") & (table.pet)].iloc[0]
    assert sf["diff_vs_baseline"] == pytest.approx(0.05, abs=0.003) and sf["p_value"] < 1e-4
    assert sf["p_sign_flip"] == pytest.approx(2 / 32)
    co = table[(table.gate_order == "commuting") & (table.pet)].iloc[0]
    assert abs(co["diff_vs_baseline"]) < 1e-9 and co["p_value"] == 1.0
    text = ablation.finding(table, "macro_f1")
    assert "gate_order=safe_first, pet=True" in text and "a measurable difference" in text
    assert "gate_order=commuting, pet=True" in text and "no measurable difference" in text


def test_ablation_notebook_runs_headless(tmp_path):
    papermill = pytest.importorskip("papermill")
    import json
    from pathlib import Path

    rng = np.random.default_rng(1)
    rows = [{"run": f"{o}-{p}-{s}", "gate_order": o, "pet": p, "seed": s, "status": "ok",
             "metric.macro_f1": 0.6 + rng.normal(0, 0.02), "metric.safety_score": 0.6 + rng.normal(0, 0.02)}
            for o in ("safe_first", "cmd_first", "commuting", "none") for p in (True, False) for s in range(5)]
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    root = Path(__file__).resolve().parents[1]
    papermill.execute_notebook(
        str(root / "notebooks" / "02_gate_ablation.ipynb"), str(tmp_path / "out.ipynb"),
        parameters={"summary_csv": str(tmp_path / "summary.csv"), "metrics": ["macro_f1", "safety_score"],
                    "output_dir": str(tmp_path), "figures_dir": ""},
        cwd=str(root), kernel_name="python3", progress_bar=False)
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert len(result["table"]) == 16 and "paired t p" in result["finding"]
    assert result["runs_ok"] == result["runs"] == 40 and result["conclusion"].startswith("Non-commutative gating")
    assert "no run checkpoints found" in result["geometry"]  # a summary without run folders
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 40
    assert (tmp_path / "gate_ablation.png").stat().st_size > 1000


def test_holm_adjustment_by_hand():
    adjusted = ablation.holm_adjust([0.01, 0.04, math.nan, 0.03, 0.5])
    # family of 4: sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(.04, 3*.03), max(.09, 2*.04), max(.09, .5)
    assert adjusted[0] == pytest.approx(0.04) and adjusted[3] == pytest.approx(0.09)
    assert adjusted[1] == pytest.approx(0.09) and adjusted[4] == pytest.approx(0.5) and math.isnan(adjusted[2])


def test_conclusion_says_plainly_whether_non_commutative_gating_mattered():
    rng = np.random.default_rng(3)
    def summary(shift):
        return pd.DataFrame([{"gate_order": o, "pet": p, "seed": s, "status": "ok",
                              "metric.macro_f1": 0.6 + (shift if o == "safe_first" else 0) + rng.normal(0, 0.01)}
                             for o in ("safe_first", "cmd_first", "commuting", "none") for p in (True, False)
                             for s in range(5)])
    null = ablation.conclusion(ablation.analyze(summary(0.0), ["macro_f1"]))
    assert null.startswith("Non-commutative gating (safe_first, cmd_first) made no measurable difference")
    assert "6 comparisons against gate_order=none" in null and "5 paired seeds" in null
    against_cmd = ablation.conclusion(ablation.analyze(summary(0.0), ["macro_f1"], baseline="cmd_first"),
                                      baseline="cmd_first")  # safe_first against cmd_first: order alone
    assert against_cmd.startswith("Non-commutative gating (safe_first) made no measurable difference")
    assert "comparisons against gate_order=cmd_first" in against_cmd
    effect = ablation.conclusion(ablation.analyze(summary(0.1), ["macro_f1"]))
    assert effect.startswith("Non-commutative gating made a measurable difference")
    assert "safe_first with PET on: macro_f1 +0.09" in effect or "safe_first with PET on: macro_f1 +0.1" in effect
    assert "safe_first with PET off" in effect and "cmd_first" not in effect.split(":", 1)[1]


def test_gate_geometry_is_read_from_each_runs_best_checkpoint(tmp_path, tokenizer):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for name, gates in (("a", {"order": "safe_first", "init_std": 0.1}), ("b", {"order": "commuting", "init_std": 0.1}),
                        ("c", {"order": "none"})):
        SO8TModel.from_config(ModelConfig(gates=gates), tokenizer).save(tmp_path / name / "run" / "best")
    summary = pd.DataFrame([{"run": "a", "gate_order": "safe_first", "pet": True, "seed": 0},
                            {"run": "b", "gate_order": "commuting", "pet": True, "seed": 0},
                            {"run": "c", "gate_order": "none", "pet": True, "seed": 0},
                            {"run": "missing", "gate_order": "cmd_first", "pet": True, "seed": 0}])
    geometry = ablation.gate_geometry_of_runs(tmp_path, summary).set_index("run")
    assert list(geometry.index) == ["a", "b"]
    assert geometry.loc["a", "commutator"] > 0.3 and geometry.loc["b", "commutator"] < 1e-5


def test_geometry_summary_names_pairs_that_commute_in_practice():
    geometry = pd.DataFrame([{"gate_order": "safe_first", "cosine": 0.9998, "commutator": 0.013, "safe_angle": 0.09,
                              "cmd_angle": 0.03},
                             {"gate_order": "cmd_first", "cosine": 0.1, "commutator": 0.45, "safe_angle": 0.4,
                              "cmd_angle": 0.4}])
    text = ablation.geometry_summary(geometry)
    assert "safe_first (1 runs): generator cosine 0.9998, relative commutator 0.0130" in text
    assert "nearly commute" in text.splitlines()[1] and "stays non-commutative" in text.splitlines()[0]
    assert "could not be inspected" in ablation.geometry_summary(pd.DataFrame())


def test_a_nan_t_statistic_has_no_p_value():
    assert math.isnan(ablation.t_two_sided_p(float("nan"), 4))


def test_conclusion_gives_the_range_of_paired_seeds_when_failed_runs_leave_fewer_pairs():
    """Three baseline runs failed with PET off: those comparisons pair 2 seeds, not the 5 of the others."""
    rng = np.random.default_rng(0)
    summary = pd.DataFrame([{"gate_order": o, "pet": p, "seed": s,
                             "status": "failed" if (o == "none" and not p and s >= 2) else "ok",
                             "metric.macro_f1": 0.55 + rng.normal(0, 0.01)}
                            for o in ("safe_first", "none") for p in (True, False) for s in range(5)])
    table = ablation.analyze(summary, ["macro_f1"])
    text = ablation.conclusion(table)
    assert "2-5 paired seeds per comparison" in text and "5 paired seeds each" not in text
    best = table.loc[table["p_value"].idxmin()]
    assert f"{int(best['pairs'])} paired seeds)." in text  # the comparison it quotes says its own count
    equal = ablation.conclusion(ablation.analyze(summary.assign(status="ok"), ["macro_f1"]))
    assert "(5 paired seeds each)" in equal and "paired seeds)." not in equal  # the committed wording


def test_the_report_draws_only_on_runs_that_finished(tmp_path):
    """analyze() kept status "ok" runs only, but the gate geometry (the card's "Why") read a failed run's
    checkpoint and the steps counted its steps: a crashed run's half-trained gates explained the finding."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    for run, seed in (("ok_run", 0), ("failed_run", 1), ("unknown_run", 2)):
        (tmp_path / run / "run").mkdir(parents=True)
        g = torch.Generator().manual_seed(seed)
        save_file({f"layers.0.r_{k}.theta": torch.randn(2, 28, generator=g) for k in ("safe", "cmd")},
                  str(tmp_path / run / "run" / "adapter.safetensors"))
    summary = pd.DataFrame([
        {"run": "ok_run", "gate_order": "safe_first", "pet": True, "seed": 0, "status": "ok", "metric.macro_f1": 0.6,
         "metric.steps": 100},
        {"run": "failed_run", "gate_order": "safe_first", "pet": True, "seed": 1, "status": "failed",
         "metric.macro_f1": None, "metric.steps": 7},
        {"run": "unknown_run", "gate_order": "safe_first", "pet": True, "seed": 2, "status": None,
         "metric.macro_f1": None, "metric.steps": 3}])
    geometry = ablation.gate_geometry_of_runs(tmp_path, summary)
    assert list(geometry["run"]) == ["ok_run"]
    assert "(1 runs)" in ablation.geometry_summary(geometry)
    every_run = pd.concat([geometry, geometry.assign(run="failed_run")])  # geometry read without the filter
    result = ablation.write_report(summary, ablation.analyze(summary, ["macro_f1"]), every_run, tmp_path / "out",
                                   ["macro_f1"])
    assert result["steps"] == [100] and "(1 runs)" in result["geometry"]
    assert (result["runs_ok"], result["runs"]) == (1, 3)


def _runs(orders=("safe_first", "none"), lrs=(0, 1), seeds=(0, 1, 2), status="ok"):
    return pd.DataFrame([{"run": f"{o}-{lr}-{s}", "gate_order": o, "pet": True, "lr": lr, "seed": s, "status": status,
                          "metric.macro_f1": 0.5 + 0.3 * lr + 0.01 * s + (0.02 if o == "safe_first" else 0)}
                         for o in orders for lr in lrs for s in seeds])


def test_another_varying_parameter_keeps_its_runs_apart():
    """A second grid dimension (lr) used to be pooled: each seed paired with both lrs' baselines, 12 false
    pairs of differences +0.02 and +/-0.28 instead of 3 pairs of +0.02 per lr."""
    table = ablation.analyze(_runs(), ["macro_f1"])
    compared = table[table["gate_order"] == "safe_first"]
    assert sorted(compared["lr"]) == [0, 1] and list(compared["pairs"]) == [3, 3]
    assert compared["diff_vs_baseline"].tolist() == pytest.approx([0.02, 0.02])
    assert (table["n"] == 3).all() and "lr=1" in ablation.finding(table, "macro_f1")
    twice = pd.concat([_runs(lrs=(0,)), _runs(lrs=(0,)).assign(run=lambda f: f["run"] + "-again")])
    with pytest.raises(ValueError, match="share a configuration and seed"):  # two sweeps joined: one seed twice
        ablation.analyze(twice, ["macro_f1"])


def test_a_summary_without_a_pet_column_is_compared_by_gate_order():
    table = ablation.analyze(_runs(lrs=(0,)).drop(columns=["pet", "lr"]), ["macro_f1"])
    assert list(table["gate_order"]) == ["none", "safe_first"] and table["pairs"].iloc[1] == 3
    with pytest.raises(ValueError, match="no 'seed' column"):
        ablation.analyze(_runs().drop(columns="seed"), ["macro_f1"])
    with pytest.raises(ValueError, match=r"no metric \['safety_score'\]"):
        ablation.analyze(_runs(), ["safety_score"])
    with pytest.raises(ValueError, match="no metric to analyze"):  # said "no finished run" after "12 of 12 finished"
        ablation.analyze(_runs(), [])
    with pytest.raises(ValueError, match=r"baseline 'nnone' is no gate_order of a finished run; the sweep has "
                                         r"\['none', 'safe_first'\]"):  # read as "no baseline runs on the same seeds"
        ablation.analyze(_runs(), ["macro_f1"], baseline="nnone")


def test_when_every_run_failed_nothing_is_written(tmp_path):
    """It used to write an ablation.json saying "no paired comparisons", then the figure crashed (KeyError
    'gate_order') after the committed files had been replaced."""
    (tmp_path / "ablation.json").write_text("committed")
    failed = _runs(status="failed")
    with pytest.raises(ValueError, match="none of the 12 runs in the sweep's summary.csv finished"):
        ablation.analyze(failed, ["macro_f1"])
    with pytest.raises(ValueError, match="no finished run to report"):
        ablation.write_report(failed, pd.DataFrame(), pd.DataFrame(), tmp_path, ["macro_f1"], "runs/x/summary.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.json"]
    assert (tmp_path / "ablation.json").read_text() == "committed"


def test_the_figure_shows_every_bar_and_marks_a_configuration_without_an_interval():
    """The y-range came from the intervals only, so a one-seed configuration's bar (no interval) was cut off,
    and its missing interval was drawn as a zero-length error bar, as if certain."""
    from so8t_lib.workbench import plots

    summary = _runs(orders=("none", "cmd_first"), lrs=(0,))
    summary = pd.concat([summary, pd.DataFrame([{"run": "s0", "gate_order": "safe_first", "pet": True, "lr": 0, "seed": 0,
                                                 "status": "ok", "metric.macro_f1": 0.9}])])
    fig = plots.ablation_figure(ablation.analyze(summary, ["macro_f1"]), ["macro_f1"])
    top = fig.axes[0]
    heights = {label.get_text(): bar.get_height() for bar, label in zip(top.patches, top.get_xticklabels())}
    assert heights["safe_first"] == pytest.approx(0.9) and top.get_ylim()[1] > 0.9
    texts = [t.get_text() for t in top.texts]
    assert texts.count("n=3") == 2 and "n=1\nno interval" in texts
    assert len(top.collections[0].get_segments()) == 2  # error bars for the two configurations with an interval
    plots.plt.close(fig)
    with pytest.raises(ValueError, match="no configurations"):
        plots.ablation_figure(pd.DataFrame(), ["macro_f1"])
