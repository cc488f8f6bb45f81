"""The gate ablation's statistics: per configuration, the mean over seeds with a 95% t-interval, and
a paired comparison against the baseline (gate order ``none``) on the same seeds and PET setting.

The paired test is Student's paired t-test on the per-seed differences (SciPy's t distribution, which
also gives the intervals' critical values at any number of seeds). An exact sign-flip
permutation p-value is reported beside it as an assumption-free check; note that with 5 seeds its
smallest possible value is 2/32 = 0.0625.

An ablation makes many comparisons (3 gated orders x PET on/off x several metrics), so the verdicts use
Holm-adjusted p-values over the whole table: at alpha 0.05 and 24 comparisons, about one unadjusted
"difference" is expected from seed noise alone.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file
from scipy.stats import t as student_t

from ..core.checkpoint import resolve_checkpoint
from ..core.io import atomic_write_text
from ..core.schema import ADAPTER_FILE
from ..model.gates import N_TORUS_PARAMS, generator_geometry


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the mean with its two-sided 95% Student-t interval (NaN bounds for n < 2)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    crit = float(student_t.ppf(0.975, len(x) - 1))  # not 1.96 past a table's end: still wider at 32 seeds
    half = crit * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if df < 1 or math.isnan(t):
        return math.nan
    return float(min(1.0, 2 * student_t.sf(abs(t), df)))


def paired_t_p_value(differences) -> float:
    """Two-sided paired t-test p-value. Identical non-zero differences on every seed leave the spread unknown
    (t is infinite on a test set where a few rows flip the same way each time): then the exact sign-flip
    p-value answers, which with few seeds cannot be small, instead of claiming p = 0."""
    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal up to rounding
        return sign_flip_p_value(d) if abs(d.mean()) > 1e-12 else 1.0
    return t_two_sided_p(float(d.mean()) / (sd / math.sqrt(len(d))), len(d) - 1)


def sign_flip_p_value(differences) -> float:
    """Two-sided exact p-value of mean(differences) = 0 under random signs (exact up to 16 pairs,
    otherwise 20,000 random sign patterns)."""
    d = np.asarray(differences, dtype=float)
    if len(d) == 0:
        return math.nan
    observed = abs(d.mean())
    if len(d) <= 16:
        signs = np.array(list(itertools.product([1.0, -1.0], repeat=len(d))))
    else:
        signs = np.random.default_rng(0).choice([1.0, -1.0], size=(20_000, len(d)))
    means = np.abs((signs * d).mean(axis=1))
    return float((means >= observed - 1e-12).mean())


def finished_runs(summary: pd.DataFrame) -> pd.DataFrame:
    """The runs whose sweep status is "ok" (all of them when the summary has no status): a failed or unfinished
    run's metrics, steps and half-trained gates would speak for a configuration it never finished training."""
    return summary[summary["status"] == "ok"] if "status" in summary else summary


def gate_geometry_of_runs(root: str | Path, summary: pd.DataFrame) -> pd.DataFrame:
    """Per run of a sweep: how non-commutative its trained gate pair is (``gates.generator_geometry``,
    averaged over the gated layers), read from the run's best checkpoint (``<root>/<run>/run/``).

    Runs that did not finish (``finished_runs``), without gates or without a checkpoint are left out. This is the mechanism check beside the
    metrics: if the trained R_safe and R_cmd commute, their order cannot matter.
    """
    rows = []
    for _, run in finished_runs(summary).iterrows():
        if run.get("gate_order") in (None, "none"):
            continue
        adapter = resolve_checkpoint(Path(root) / str(run["run"]) / "run") / ADAPTER_FILE
        if not adapter.is_file():
            continue
        state = load_file(adapter)
        prefixes = sorted(k[: -len("r_safe.theta")] for k in state if k.endswith("r_safe.theta"))
        per_layer = [generator_geometry(state[p + "r_safe.theta"], state[p + "r_cmd.theta"],
                                        torus=state[p + "r_safe.theta"].shape[-1] == N_TORUS_PARAMS) for p in prefixes]
        if per_layer:
            rows.append({"run": run["run"], **{c: run[c] for c in ("gate_order", "pet", "seed") if c in run},
                         **{k: float(np.mean([g[k] for g in per_layer])) for k in per_layer[0]}})
    return pd.DataFrame(rows)


def geometry_summary(geometry: pd.DataFrame, group: str = "gate_order") -> str:
    """One sentence per gate order on how commutative its trained pairs are (``gate_geometry_of_runs``)."""
    if geometry.empty:
        return "Gate geometry: no run checkpoints found, so the trained gate pairs could not be inspected."
    lines = []
    for order, part in geometry.groupby(group):
        verdict = ("they commute by construction" if order == "commuting" else
                   "R_safe and R_cmd nearly commute, so their order can hardly matter" if part["commutator"].mean() < 0.05
                   else "the pair stays non-commutative")
        lines.append(f"Gate geometry, {group}={order} ({len(part)} runs): generator cosine {part['cosine'].mean():.4f}, "
                     f"relative commutator {part['commutator'].mean():.4f}, distance from identity "
                     f"R_safe {part['safe_angle'].mean():.3f} / R_cmd {part['cmd_angle'].mean():.3f}: {verdict}.")
    return "\n".join(lines)


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaN entries stay NaN and do not
    count towards the family."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (len(valid) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


TABLE_STATISTICS = ("metric", "n", "mean", "ci_low", "ci_high", "diff_vs_baseline", "diff_ci_low", "diff_ci_high",
                    "p_value", "p_sign_flip", "pairs", "p_holm")  # analyze()'s columns besides the configuration's


def configuration_columns(ok: pd.DataFrame, group: str = "gate_order", pair_by: tuple[str, ...] = ("pet", "seed")) -> list[str]:
    """The columns that tell configurations apart: ``group``, the ``pair_by`` columns the summary has (but the
    seed), and every other parameter that varies among the finished runs (a second grid dimension such as a
    learning rate), so a run is only ever paired with the baseline under the same other settings."""
    fixed = [group] + [c for c in pair_by if c != "seed" and c in ok]
    varying = [c for c in ok.columns if c not in (*fixed, "run", "status", "seed") and not str(c).startswith("metric.")
               and ok[c].astype(str).nunique() > 1]
    return fixed + varying


def _finished_or_refuse(summary: pd.DataFrame, metrics: list[str], group: str) -> pd.DataFrame:
    """The finished runs, or ValueError saying why there is nothing to compare (before any report is written)."""
    for column in (group, "seed"):
        if column not in summary:
            raise ValueError(f"the sweep's summary.csv has no '{column}' column: the ablation compares "
                             f"configurations by '{group}', paired on 'seed'")
    ok = finished_runs(summary)
    if ok.empty:
        statuses = summary["status"].fillna("(none)").value_counts().to_dict() if "status" in summary else {}
        raise ValueError(f"none of the {len(summary)} runs in the sweep's summary.csv finished (statuses: {statuses}): "
                         "nothing to analyze; rerun the sweep (so8t sweep resumes it) and read its errors first")
    if not metrics:
        raise ValueError("no metric to analyze: name at least one (e.g. macro_f1)")
    if missing := [m for m in metrics if m not in ok and f"metric.{m}" not in ok]:
        raise ValueError(f"the sweep's summary.csv has no metric {missing}; it has "
                         f"{sorted(str(c)[len('metric.'):] for c in ok if str(c).startswith('metric.'))}")
    return ok


def _same(frame: pd.DataFrame, column: str, value) -> pd.Series:
    return frame[column].isna() if pd.isna(value) else frame[column] == value


def analyze(summary: pd.DataFrame, metrics: list[str], group: str = "gate_order", baseline: str = "none",
            pair_by: tuple[str, ...] = ("pet", "seed")) -> pd.DataFrame:
    """One row per (configuration, metric): n, mean, 95% interval; and against the baseline on the same seed
    and other settings (``configuration_columns``): mean difference, its interval, and the p-values.

    ValueError, before anything is written, when no run finished, a column or metric it needs is missing, the
    baseline is none of several configurations of finished runs, or two finished runs share one configuration and seed
    (pairing them would count one seed twice)."""
    ok = _finished_or_refuse(summary, metrics, group)
    groups = set(ok[group].astype(str))
    if baseline not in groups and len(groups) > 1:  # a typo read as "no baseline runs", blaming the sweep
        raise ValueError(f"baseline {baseline!r} is no {group} of a finished run; the sweep has {sorted(groups)}")
    config_cols = configuration_columns(ok, group, pair_by)
    if (twice := ok[ok.duplicated(config_cols + ["seed"], keep=False)]).shape[0]:
        first = twice.iloc[0]
        raise ValueError(f"{len(twice)} finished runs share a configuration and seed (e.g. "
                         f"{', '.join(f'{c}={first[c]}' for c in config_cols + ['seed'])}"
                         f"{', runs ' + ', '.join(map(str, twice['run'])) if 'run' in twice else ''}): the summary "
                         "joins two sweeps or lacks the parameter that tells them apart")
    rows = []
    for keys, part in ok.groupby(config_cols, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        config = dict(zip(config_cols, keys))
        base = ok[ok[group] == baseline]
        for col in config_cols[1:]:
            base = base[_same(base, col, config[col])]
        for metric in metrics:
            column = metric if metric in part else f"metric.{metric}"
            mean, low, high = t_interval(part[column])
            row = {**config, "metric": metric, "n": int(part[column].notna().sum()), "mean": mean,
                   "ci_low": low, "ci_high": high}
            if config[group] != baseline and len(base):
                paired = part[["seed", column]].merge(base[["seed", column]], on="seed", suffixes=("", "_base")).dropna()
                diff = (paired[column] - paired[f"{column}_base"]).to_numpy()
                d_mean, d_low, d_high = t_interval(diff)
                row.update(diff_vs_baseline=d_mean, diff_ci_low=d_low, diff_ci_high=d_high,
                           p_value=paired_t_p_value(diff), p_sign_flip=sign_flip_p_value(diff), pairs=len(diff))
            rows.append(row)
    table = pd.DataFrame(rows)
    if "p_value" in table:
        table["p_holm"] = holm_adjust(table["p_value"])
    return table


def finding(table: pd.DataFrame, metric: str, group: str = "gate_order", alpha: float = 0.05) -> str:
    """A plain-language sentence per configuration: did it differ measurably from the baseline?"""
    lines = []
    for _, row in table[(table["metric"] == metric) & (table.get("pairs", pd.Series(dtype=float)) >= 1)].iterrows():
        label = ", ".join(f"{k}={row[k]}" for k in row.index if k not in TABLE_STATISTICS)
        said = f"{label}: {metric} {row['mean']:.3f} vs baseline, difference {row['diff_vs_baseline']:+.3f}"
        if int(row["pairs"]) < 2:  # not "no baseline runs on the same seeds": there is one, and no test on one
            lines.append(f"{said} on 1 paired seed: n=1, no test possible.")
            continue
        p_holm = row.get("p_holm", row["p_value"])
        verdict = "a measurable difference" if p_holm < alpha else "no measurable difference"
        width = row["diff_ci_high"] - row["diff_ci_low"]
        if row["p_value"] == row.get("p_sign_flip") and width <= 1e-9 * max(1.0, abs(row["diff_vs_baseline"])):
            # the same difference on every seed: no spread, so no t interval, and paired_t_p_value's p is the sign flip's
            interval, test = "on every seed (interval n/a)", "exact sign-flip p"
        else:
            interval, test = f"[{row['diff_ci_low']:+.3f}, {row['diff_ci_high']:+.3f}]", "paired t p"
        lines.append(f"{said} {interval}, {test} = {row['p_value']:.3f} (Holm {p_holm:.3f}) over "
                     f"{int(row['pairs'])} paired seeds: {verdict} at alpha {alpha}.")
    return "\n".join(lines)


def _paired_seeds(pairs: pd.Series) -> str:
    """How many seeds the comparisons paired: one number when all agree, else the range, since a failed
    run leaves its comparisons fewer pairs and the largest count would overstate them."""
    low, high = int(pairs.min()), int(pairs.max())
    return f"{high} paired seeds each" if low == high else f"{low}-{high} paired seeds per comparison"


def conclusion(table: pd.DataFrame, alpha: float = 0.05, group: str = "gate_order", baseline: str = "none",
               non_commuting: tuple[str, ...] = ("safe_first", "cmd_first")) -> str:
    """The ablation's answer in one paragraph: did non-commutative gating differ measurably from the
    baseline on any metric, after Holm's correction over every comparison in the table?"""
    compared = table[table.get("p_holm", pd.Series(dtype=float)).notna()] if "p_holm" in table else table.iloc[0:0]
    if compared.empty and "pairs" in table and (table["pairs"] == 1).any():
        return (f"No paired test was possible: the comparisons against {group}={baseline} have 1 paired seed (n=1), "
                "and a paired test needs at least 2; run more seeds.")
    if compared.empty:
        return "No paired comparisons: the summary has no baseline runs on the same seeds."
    ours = compared[compared[group].isin(non_commuting)]
    hits = ours[ours["p_holm"] < alpha]
    family = f"{len(compared)} comparisons against {group}={baseline}"
    seeds = _paired_seeds(compared["pairs"])
    equal = compared["pairs"].nunique() == 1

    def per_pair(row: pd.Series) -> str:
        return "" if equal else f", {int(row['pairs'])} paired seeds"

    single = sorted(set(table.loc[table[group].isin(non_commuting) & (table.get("pairs", 0) == 1), group].astype(str)))
    if ours.empty and single:  # run, but on one paired seed: not "not compared"
        return (f"No paired test of {', '.join(single)} was possible: each has 1 paired seed against {group}={baseline} "
                "(n=1), and a paired test needs at least 2; run more seeds.")
    if ours.empty:  # e.g. commuting against none only: a verdict on the non-commutative orders would be invented
        significant = int((compared["p_holm"] < alpha).sum())
        return (f"No non-commutative order ({', '.join(non_commuting)}) was compared: the paired comparisons are of "
                f"{group}={', '.join(sorted(set(compared[group].astype(str))))} only ({family}, {seeds}; "
                f"{significant} significant at alpha {alpha} after Holm's correction), so this sweep says nothing "
                "about non-commutative gating.")
    if hits.empty:
        best = ours.loc[ours["p_value"].idxmin()]
        present = [o for o in non_commuting if o in set(ours[group])]
        return (f"Non-commutative gating ({', '.join(present)}) made no measurable difference: none of "
                f"its comparisons is significant at alpha {alpha} after Holm's correction over {family} "
                f"({seeds}). The smallest unadjusted p was {best['p_value']:.3f} "
                f"({group}={best[group]}, {best['metric']}, difference {best['diff_vs_baseline']:+.3f}{per_pair(best)}).")
    parts = [f"{r[group]}{'' if 'pet' not in r else ' with PET ' + ('on' if r['pet'] else 'off')}: {r['metric']} "
             f"{r['diff_vs_baseline']:+.3f} (Holm p {r['p_holm']:.3f}{per_pair(r)})" for _, r in hits.iterrows()]
    return (f"Non-commutative gating made a measurable difference at alpha {alpha} after Holm's correction over "
            f"{family} ({seeds}): " + "; ".join(parts) + ".")


def write_report(summary: pd.DataFrame, table: pd.DataFrame, geometry: pd.DataFrame, out: str | Path,
                 metrics: list[str], summary_csv: str = "", baseline: str = "none", alpha: float = 0.05) -> dict:
    """Save an ablation where the model card and the README read it: ``summary.csv``, ``geometry.csv`` and
    ``ablation.json`` (the table, the per-configuration verdicts, the conclusion and the gate geometry),
    each written to a temporary file and renamed. Returns the ``ablation.json`` content."""
    finished = finished_runs(summary)  # steps and geometry of the runs analyze() counts, not of failed ones
    if finished.empty or table.empty:  # the committed files stay as they are
        raise ValueError(f"no finished run to report in {summary_csv or 'the summary'}: nothing was written to {out}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = sorted({int(s) for s in finished["metric.steps"].dropna()}) if "metric.steps" in finished else []
    if "run" in geometry and "run" in finished:
        geometry = geometry[geometry["run"].isin(finished["run"])]
    result = {"summary_csv": summary_csv, "baseline": baseline, "runs_ok": len(finished), "runs": len(summary),
              "steps": steps, "conclusion": conclusion(table, alpha=alpha, baseline=baseline),
              "geometry": geometry_summary(geometry),
              "finding": "\n\n".join(finding(table, m, alpha=alpha) for m in metrics),
              "table": json.loads(table.to_json(orient="records"))}
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "geometry.csv", geometry.to_csv(index=False))
    atomic_write_text(out / "ablation.json", json.dumps(result, indent=1))
    return result
