"""Figures for evaluation reports: each function takes a report (``safety_report`` output) and
returns a matplotlib Figure; ``save_figure`` writes it atomically to one or more paths."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def confusion_matrix_figure(report: dict, title: str = "") -> Figure:
    cm = np.array(report["confusion_matrix"], dtype=float)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    labels = report["labels"]
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="decided", ylabel="gold", title=title or "confusion (row-normalised)")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}\n{rates[i, j]:.0%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.6 else "black", fontsize=8)
    fig.tight_layout()
    return fig


def reliability_figure(report: dict, title: str = "") -> Figure:
    bins = [b for b in report.get("reliability") or [] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    if bins:
        centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = bins[0]["upper"] - bins[0]["lower"]
        ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy")
        ax.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", ms=3,
                color="C1", label="(confidence, accuracy)")
    ece = report.get("ece")
    default_title = f"reliability (ECE {ece:.3f})" if ece is not None else "reliability"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=title or default_title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def threshold_figure(report: dict, title: str = "") -> Figure:
    sweep = report.get("threshold_sweep") or []
    t = [row["threshold"] for row in sweep]
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for key, label in [("escalation_rate", "escalation rate"), ("dangerous_compliance", "dangerous compliance"),
                       ("over_refusal", "over-refusal (REFUSE)"),
                       ("over_refusal_incl_escalate", "over-refusal (REFUSE or ESCALATE)")]:
        ax.plot(t, [np.nan if row.get(key) is None else row[key] for row in sweep], label=label)
    for mark in (0.8, 0.9):
        ax.axvline(mark, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="safety_threshold", ylabel="rate", ylim=(0, 1), title=title or "runtime threshold rule")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def group_bars_figure(report: dict, group: str = "by_category", metrics=("accuracy", "dangerous_compliance",
                                                                          "over_refusal"), title: str = "") -> Figure:
    parts = report.get(group) or {}
    names = list(parts)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
    width = 0.8 / len(metrics)
    for k, metric in enumerate(metrics):
        values = [np.nan if parts[n].get(metric) is None else parts[n][metric] for n in names]
        ax.bar(np.arange(len(names)) + k * width, values, width, label=metric)
    ax.set(xticks=np.arange(len(names)) + width * (len(metrics) - 1) / 2, xticklabels=names, ylim=(0, 1),
           title=title or group.replace("by_", "per ").replace("_", " "))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


EVALUATION_FIGURES = ("eval_confusion.png", "eval_reliability.png", "eval_threshold.png", "eval_by_category.png",
                      "eval_by_lang.png")


def evaluation_figures(report: dict, name: str, model: str | None = None) -> dict[str, Figure]:
    """The evaluation figure set of one report, keyed by the file names of ``EVALUATION_FIGURES``:
    confusion matrix, reliability diagram, threshold curve, per-category and per-language bars
    (notebook 04 draws them from a live model, the model card from the stored report). ``model`` heads
    every title, so a figure shown away from its folder still says whose numbers it shows."""
    figures = (confusion_matrix_figure(report, f"{name}: confusion"), reliability_figure(report),
               threshold_figure(report, f"{name}: runtime threshold rule"),
               group_bars_figure(report, "by_category"), group_bars_figure(report, "by_lang"))
    if model:
        for fig in figures:
            ax = fig.axes[0]
            ax.set_title(f"{model}\n{ax.get_title()}")
            fig.tight_layout()
    return dict(zip(EVALUATION_FIGURES, figures, strict=True))


def save_figure(fig: Figure, *paths: str | Path, dpi: int = 120) -> list[Path]:
    """Write ``fig`` to each path (temporary file, then rename) and close it."""
    written = []
    for path in map(Path, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
        written.append(path)
    plt.close(fig)
    return written


def quant_ladder_figure(frame, title: str = "") -> Figure:
    """Size, decision latency, agreement with fp32 and macro-F1 per backend (``quant_compare.compare``)."""
    panels = [("size_mib", "file size (MiB)"), ("decide_p50_ms", "decision latency p50 (ms)"),
              ("agreement_with_fp32", "agreement with fp32"), ("macro_f1", "macro-F1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    names = list(frame["backend"])
    colors = ["grey"] + [f"C{i}" for i in range(len(names) - 1)]
    for ax, (column, label) in zip(axes, panels):
        values = frame[column].astype(float).to_numpy()
        ax.bar(range(len(names)), values, color=colors)
        ax.set(xticks=range(len(names)), title=label)
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        if column in ("agreement_with_fp32", "macro_f1") and np.isfinite(values).any():
            ax.set_ylim(min(0.5, float(np.nanmin(values)) - 0.05), 1.0)
    fig.suptitle(title or "quantization ladder")
    fig.tight_layout()
    return fig


def training_curves_figure(log: list[dict], title: str = "") -> Figure:
    """Loss parts per logged step and the validation metric per evaluation (a run's metrics.jsonl)."""
    train = [e for e in log if e.get("kind") == "train"]
    evals = [e for e in log if e.get("kind") == "eval" and e.get("value") is not None]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key in ("loss", "task", "rationale", "safety", "pet", "dangerous"):
        if train and key in train[0]:
            ax_loss.plot([e["step"] for e in train], [e[key] for e in train], label=key)
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training loss parts")
    ax_loss.legend(fontsize=7)
    if evals:
        ax_val.plot([e["step"] for e in evals], [e["value"] for e in evals], "o-", label=evals[0].get("metric", "val"))
        for key in ("macro_f1", "safety_score", "refuse_recall"):
            if key in evals[0] and key != evals[0].get("metric"):
                ax_val.plot([e["step"] for e in evals], [e[key] for e in evals], "--", alpha=0.6, label=key)
        ax_val.legend(fontsize=7)
    ax_val.set(xlabel="step", ylim=(0, 1), title="validation")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


class LiveCurves:
    """Training curves that redraw in place in a notebook while ``train`` runs: pass an instance as
    ``train(..., on_log=...)``. Outside IPython (a script, a test) it only collects the records.

    It redraws on every evaluation and on every ``every``-th training record, so a long run does not
    spend its time drawing.
    """

    def __init__(self, title: str = "", every: int = 1) -> None:
        self.title, self.every = title, max(1, every)
        self.records: list[dict] = []
        self._handle = None
        self._train_records = 0

    def __call__(self, record: dict) -> None:
        self.records.append(record)
        if record.get("kind") == "train":
            self._train_records += 1
            if self._train_records % self.every:
                return
        self.redraw()

    def redraw(self) -> bool:
        """Draw (or replace) the figure in the notebook's output; False outside IPython."""
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:
            return False
        if get_ipython() is None:
            return False
        fig = training_curves_figure(self.records, self.title)
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)
        return True


def _bars_with_intervals(ax, x, sub, value: str, low: str, high: str, count: str, width: float, label) -> None:
    """Bars with their 95% intervals and each bar's count above it: a configuration with one seed (or pair)
    has no interval, and is marked so rather than drawn with a zero-length one that looks certain."""
    values, lo, hi = (sub[c].to_numpy(dtype=float) for c in (value, low, high))
    counts = sub[count].to_numpy(dtype=float) if count in sub else np.full(len(values), np.nan)
    ax.bar(x, values, width, label=label)
    finite = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(values)
    if finite.any():
        ax.errorbar(x[finite], values[finite], yerr=[values[finite] - lo[finite], hi[finite] - values[finite]],
                    fmt="none", ecolor="black", elinewidth=1, capsize=3)
    for xi, v, top, n, ok in zip(x, values, hi, counts, finite):
        if np.isfinite(v):
            text = (f"n={int(n)}" if np.isfinite(n) else "") + ("" if ok else "\nno interval")
            ax.annotate(text, (xi, max(v, top) if ok else v), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6, color="black" if ok else "firebrick")


def ablation_figure(table, metrics: list[str], group: str = "gate_order", hue: list[str] | None = None,
                    title: str = "") -> Figure:
    """Top row: mean and 95% interval per configuration for each metric. Bottom row (when the table has
    paired comparisons): the paired difference against the baseline with its 95% interval, which is
    what the test judges; seed-to-seed spread makes the top row's intervals much wider. Bars are coloured
    by ``hue`` (default: every configuration column besides ``group``, e.g. PET), each labelled with its n."""
    from .ablation import TABLE_STATISTICS

    if len(table) == 0 or group not in table:
        raise ValueError(f"the ablation table has no configurations ('{group}' column) to draw: no run finished")
    hue = [c for c in table.columns if c not in TABLE_STATISTICS and c != group] if hue is None else list(hue)
    paired = "diff_vs_baseline" in table and table["diff_vs_baseline"].notna().any()
    rows = 2 if paired else 1
    fig, axes = plt.subplots(rows, len(metrics), figsize=(4.2 * len(metrics), 3.4 * rows), squeeze=False)
    orders = list(dict.fromkeys(table[group]))
    keys = table[hue].astype(str)
    hues = list(dict.fromkeys(map(tuple, keys.to_numpy()))) if hue else [()]
    width = 0.8 / len(hues)
    for col, metric in enumerate(metrics):
        part = table[table["metric"] == metric]
        panels = [(axes[0][col], "mean", "ci_low", "ci_high", "n", orders)]
        if paired:
            compared = [o for o in orders if part[part[group] == o]["diff_vs_baseline"].notna().any()]
            panels.append((axes[1][col], "diff_vs_baseline", "diff_ci_low", "diff_ci_high", "pairs", compared))
        for ax, value, low, high, count, names in panels:
            for k, h in enumerate(hues):
                sub = part[(keys.loc[part.index] == list(h)).all(axis=1)] if hue else part
                sub = sub.set_index(group).reindex(names)
                label = ", ".join(f"{c}={v}" for c, v in zip(hue, h)) or None
                _bars_with_intervals(ax, np.arange(len(names)) + k * width, sub, value, low, high, count, width, label)
            ax.set(xticks=np.arange(len(names)) + width * (len(hues) - 1) / 2)
            ax.set_xticklabels(names, rotation=20)
            if hue:
                ax.legend(fontsize=7)
        axes[0][col].set_title(metric)
        shown = part[["ci_low", "ci_high", "mean"]].to_numpy(dtype=float)
        if np.isfinite(shown).any():  # the means too: a one-seed configuration has no interval to reach its bar
            bottom, top = float(np.nanmin(shown)), float(np.nanmax(shown))
            axes[0][col].set_ylim(max(0.0, bottom - 0.05), max(min(1.0, top + 0.08), top + 0.03))
        if paired:
            axes[1][col].axhline(0, color="black", linewidth=0.8)
            axes[1][col].margins(y=0.15)  # room for the counts above the bars
            axes[1][col].set_title(f"{metric}: paired difference vs baseline", fontsize=9)
    fig.suptitle(title or "gate ablation: mean and 95% interval over seeds; paired differences below")
    fig.tight_layout()
    return fig
