"""What the stakeholder page offers and shows, without any widgets: which models it can pick, which one
it opens on, its settings, and the HTML of one runtime result or message.

Kept apart from ``stakeholder_app`` (the widgets) so the page's logic is tested without a kernel. The
HTML carries ``data-*`` attributes (decision, per-class probability, message kind) so a browser test can
read what the page shows instead of matching words that are always on it.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..core.schema import BEST_DIR, LABELS, LAST_DIR, MODEL_CONFIG_FILE

# The page's settings when it is served (so8t present / Voilà has no papermill to inject parameters).
ENV_MODEL = "SO8T_DEMO_MODEL"
ENV_THRESHOLD = "SO8T_DEMO_THRESHOLD"
ENV_LOG_DIR = "SO8T_DEMO_LOG_DIR"
DEFAULT_RUN = "so8t-demo"  # the pretrained default's run name; its Q4_K_M file is opened first
DEFAULT_QUANT = "q4_k_m"
DEFAULT_THRESHOLD = 0.8  # configs/basic.yaml
THRESHOLD_RANGE = (0.5, 1.0)  # what the runtime config accepts
NO_MODEL = ("No trained model was found under checkpoints/ or dist/. Run <code>make demo</code> (it trains the "
            "default and exports its GGUF files), then reload this page.")

COLORS = {"ALLOW": "#2e7d32", "REFUSE": "#c62828", "ESCALATE": "#ef6c00"}
MEANING = {"ALLOW": "The assistant answers.", "REFUSE": "The assistant declines, and says why.",
           "ESCALATE": "A person with the right role decides."}
MESSAGE_STYLE = {"error": ("#fdecea", "#c62828"), "warning": ("#fff4e5", "#ef6c00"), "info": ("#e8f4fd", "#1565c0")}
MAX_ECHO_CHARS = 300


def find_models(root: str | Path = ".") -> list[str]:
    """Trained run or checkpoint folders under ``checkpoints/`` and GGUF files under ``dist/``, as paths
    relative to ``root`` (the project root), checkpoints first."""
    root = Path(root)
    runs = []
    for folder in sorted(p for p in (root / "checkpoints").glob("*") if p.is_dir()):
        if any((folder / sub / MODEL_CONFIG_FILE).is_file() for sub in (BEST_DIR, LAST_DIR, ".")):
            runs.append(folder)
    ggufs = sorted(p for p in (root / "dist").glob("*.gguf") if p.is_file())
    return [str(p.relative_to(root)) for p in runs + ggufs]


def model_label(path: str) -> str:
    """A name a stakeholder can read: ``so8t-demo · Q4_K_M (GGUF)`` or ``so8t-tiny · checkpoint``."""
    p = Path(path)
    if p.suffix == ".gguf":
        run, _, quant = p.stem.rpartition("-")
        return f"{run} · {quant.upper()} (GGUF)" if run else f"{p.stem} (GGUF)"
    name = p.parent.name if p.name in (BEST_DIR, LAST_DIR) else p.name
    return f"{name} · checkpoint"


def default_model(paths: list[str]) -> str | None:
    """The pretrained default's Q4_K_M file when present, else any Q4_K_M file, else the first found."""
    if not paths:
        return None
    wanted = f"{DEFAULT_RUN}-{DEFAULT_QUANT}.gguf"
    for path in paths:
        if Path(path).name == wanted:
            return path
    quantized = [p for p in paths if Path(p).name.endswith(f"-{DEFAULT_QUANT}.gguf")]
    return quantized[0] if quantized else paths[0]


@dataclass
class DemoSettings:
    """Everything the page opens with; ``notes`` are problems with the settings, shown on the page."""

    models: list[str]
    selected: str | None
    threshold: float
    log_dir: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def choices(self) -> list[tuple[str, str]]:
        """(label, path) pairs for the model picker; two files with one label are told apart by path."""
        labels = [model_label(m) for m in self.models]
        return [(label if labels.count(label) == 1 else f"{label} — {m}", m) for label, m in zip(labels, self.models)]


def demo_settings(models: list[str] | None = None, model: str | None = None, threshold: float | None = None,
                  log_dir: str | None = None, environ: Mapping[str, str] | None = None,
                  root: str | Path = ".") -> DemoSettings:
    """The page's settings: the notebook's parameters where given, else ``$SO8T_DEMO_*`` (how ``so8t present``
    passes them through Voilà), else the defaults. A bad value is named in ``notes``, never raised; one model
    given as a bare string is one model, not a list of its characters."""
    env = os.environ if environ is None else environ
    notes: list[str] = []
    models = [models] if isinstance(models, str) else models
    found = list(models) if models else find_models(root)
    chosen = model or env.get(ENV_MODEL) or None
    if chosen:
        same = [m for m in found if Path(m).resolve() == Path(chosen).resolve()]
        if same:
            chosen = same[0]
        else:
            found.insert(0, chosen)
    selected = chosen or default_model(found)
    named, value = ("threshold", threshold) if threshold is not None else (ENV_THRESHOLD, env.get(ENV_THRESHOLD))
    threshold = _threshold(named, value, notes) if value not in (None, "") else DEFAULT_THRESHOLD
    return DemoSettings(found, selected, threshold, log_dir or env.get(ENV_LOG_DIR) or None, notes)


def _threshold(named: str, value: object, notes: list[str]) -> float:
    """``value`` as a threshold in THRESHOLD_RANGE, else the default with a note: a string that is no number
    (papermill's ``-p threshold high``), True (not 1.0), NaN or a value out of range."""
    number = None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    low, high = THRESHOLD_RANGE
    if number is None:
        notes.append(f"{named}={value!r} is not a number; using {DEFAULT_THRESHOLD}.")
    elif not low <= number <= high:
        notes.append(f"{named} {number} is outside [{low}, {high}]; using {DEFAULT_THRESHOLD}.")
    else:
        return number
    return DEFAULT_THRESHOLD


def log_folder_problem(folder: str | Path) -> str | None:
    """Make ``folder`` (the demo's audit log and queue) and check a file can be written in it; None when it
    can, else what is wrong, for ``so8t present`` to refuse and the page to show instead of a cell error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".so8t-write-check-"):
            pass
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror
        return (f"the log folder {folder} cannot be made or written ({why or exc}); choose another (so8t present "
                "--log-dir, or the notebook's log_dir)")
    return None


# ----- HTML ---------------------------------------------------------------------------------------
def render_message(kind: str, text: str, escape: bool = True) -> str:
    """A coloured box with one message (kind: error, warning or info); never a traceback."""
    background, border = MESSAGE_STYLE[kind]
    body = html.escape(text) if escape else text
    return (f'<div class="so8t-message" data-kind="{kind}" style="background:{background};border-left:4px solid '
            f'{border};padding:8px 12px;margin:6px 0">{body}</div>')


def _echo(text: str) -> str:
    text = text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + f"… ({len(text)} characters)"
    return html.escape(text)


def _bars(probabilities: Mapping[str, float] | None) -> list[str]:
    rows = []
    for label in LABELS:
        p = (probabilities or {}).get(label)
        width, value = (0, "n/a") if p is None else (round(200 * p), f"{p:.1%}")
        rows.append(f'<div class="so8t-prob" data-label="{label}" data-value="{"" if p is None else p}" '
                    f'style="display:flex;align-items:center;margin:2px 0"><span style="width:90px">{label}</span>'
                    f'<div style="background:{COLORS[label]};height:14px;width:{width}px"></div>'
                    f'<span style="margin-left:6px">{value}</span></div>')
    return rows


def render_result(result: Mapping, request: str, threshold: float, route: Mapping[str, str | None] | None) -> str:
    """HTML for one runtime result: the decision and what it means, the request it answers, a bar per class,
    the answer or the reason, where an escalation goes, and any error as a message. ``route`` is the
    escalation route of the result's category (notify, email, slack_channel)."""
    decision = result["decision"]
    color = COLORS.get(decision, "#555")
    flags = list(result.get("flags") or [])
    parts = [f'<div class="so8t-result" data-decision="{html.escape(decision)}" '
             f'data-request-id="{html.escape(str(result.get("request_id") or ""))}">',
             f'<div class="so8t-decision" style="font-size:1.6em;font-weight:bold;color:{color}">'
             f'{html.escape(decision)}</div>',
             f'<div style="margin-bottom:6px">{MEANING.get(decision, "")}</div>',
             f'<div class="so8t-request" style="color:#555">Request: {_echo(request)}</div>']
    if "fail_closed" in flags:
        parts.append(render_message("warning", "The gate could not decide this request, so it failed closed: a person "
                                    f"reviews it. Cause: {result.get('error') or 'not given'}"))
    elif result.get("error"):
        parts.append(render_message("warning", f"Decided, with a problem: {result['error']}"))
    unsaved = decision == "ESCALATE" and result.get("escalation_status") == "unqueued"
    if unsaved:  # the rationale's "passed to ..." would be untrue
        parts.append(render_message("error", "The case could not be saved (neither the queue nor its spool took it), "
                                    "so nobody will receive it: tell the operator, who finds the cause in the log."))
    elif "audit_write_failed" in flags:
        parts.append(render_message("error", "This decision's audit record could not be written: tell the operator "
                                    "(the log folder needs fixing)."))
    parts.append(f'<div style="margin:8px 0 4px 0">Confidence per answer (the rule: the top class only when it '
                 f'reaches {threshold:g}, else a person decides)</div>')
    parts += _bars(result.get("probabilities"))
    if decision == "ALLOW" and result.get("task_response"):
        parts.append(f'<p class="so8t-answer"><b>Answer:</b> {html.escape(result["task_response"])}</p>')
    elif result.get("rationale") and not unsaved:
        parts.append(f'<p class="so8t-reason"><b>Reason:</b> {html.escape(result["rationale"])}</p>')
    if decision == "ESCALATE" and not unsaved:
        route = route or {}
        who = route.get("notify") or result.get("category") or "a person"
        where = ", ".join(x for x in (route.get("email"), route.get("slack_channel")) if x) or "no channel configured"
        status = result.get("escalation_status") or "not queued"
        parts.append(f'<p class="so8t-route"><b>Goes to:</b> {html.escape(who)} ({html.escape(where)}); case '
                     f'{html.escape(str(result.get("escalation_id") or "-"))}, {html.escape(status)}. '
                     "Demo mode: nobody is notified.</p>")
    if flags:
        parts.append(f'<p class="so8t-flags" style="color:#555"><i>Flags: {html.escape(", ".join(flags))}</i></p>')
    parts.append(f'<p class="so8t-ref" style="color:#888;font-size:0.85em">Category {html.escape(str(result.get("category")))}'
                 f' · reference {html.escape(str(result.get("request_id")))} · model '
                 f'{html.escape(str(result.get("model_version")))}</p></div>')
    return "\n".join(parts)
