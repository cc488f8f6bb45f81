"""The stakeholder demo: an ipywidgets app over the real agent runtime.

Type a request (Japanese or English) and its context, pick a model file and a threshold, and see
the decision, a confidence bar per class, the rationale or the answer, and where an escalation
would be routed. Runs the same ``Agent`` as production, in test mode (audit records marked as
tests, no notifications), logging to a temporary folder.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

from ..core.schema import LABELS
from ..model.prompts import EXAMPLE_REQUESTS
from ..serve.config import RuntimeConfig
from ..serve.runtime import Agent

COLORS = {"ALLOW": "#2e7d32", "REFUSE": "#c62828", "ESCALATE": "#ef6c00"}


def model_choices(root: str | Path = ".") -> list[str]:
    """Trained checkpoints (run folders) and GGUF files found under ``root``."""
    root = Path(root)
    runs = sorted(str(p.parent) for p in root.glob("checkpoints/*/best/so8t_model.yaml"))
    ggufs = sorted(str(p) for p in root.glob("dist/*.gguf"))
    return [str(Path(r).parent) if r.endswith("/best") else r for r in runs] + ggufs


def make_agent(model_path: str, threshold: float, log_dir: str | Path) -> Agent:
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": model_path, "use_gguf": model_path.endswith(".gguf"),
                  "gguf_path": model_path if model_path.endswith(".gguf") else None},
        "inference": {"safety_threshold": threshold, "max_tokens": 64},
        "logging": {"audit_log": str(Path(log_dir) / "audit.jsonl")},
        "escalation": {"queue_db": str(Path(log_dir) / "escalations.sqlite"), "enable_notifications": False},
    })
    return Agent(cfg, test_mode=True, log_dir=str(log_dir))  # never the real log folder of SO8T_LOG_DIR


def render_result(result: dict, agent: Agent) -> str:
    """HTML for one runtime result: decision badge, one bar per class, text, routing."""
    color = COLORS[result["decision"]]
    parts = [f'<div style="font-size:1.4em;font-weight:bold;color:{color}">{result["decision"]}'
             f'{" — a person decides" if result["human_required"] else ""}</div>']
    for label in LABELS:
        p = (result["probabilities"] or {}).get(label)
        width = 0 if p is None else round(100 * p)
        value = "n/a" if p is None else f"{p:.1%}"
        parts.append(f'<div style="display:flex;align-items:center;margin:2px 0"><span style="width:90px">{label}</span>'
                     f'<div style="background:{COLORS[label]};height:14px;width:{2 * width}px"></div>'
                     f'<span style="margin-left:6px">{value}</span></div>')
    text = result["task_response"] if result["decision"] == "ALLOW" and result["task_response"] else result["rationale"]
    parts.append(f"<p>{html.escape(text or '')}</p>")
    if result["decision"] == "ESCALATE":
        route = agent.config.escalation.routes[result["category"]]
        parts.append(f"<p>Routed to <b>{html.escape(route.notify or result['category'])}</b>: "
                     f"{html.escape(route.email or '-')}, {html.escape(route.slack_channel or '-')}</p>")
    if result.get("flags"):
        parts.append(f"<p><i>flags: {html.escape(', '.join(result['flags']))}</i></p>")
    return "\n".join(parts)


def build_app(models: list[str] | None = None, threshold: float = 0.8, log_dir: str | Path | None = None):
    """The widget tree; ``app.decide_button.click()`` works headless (tests use it)."""
    import ipywidgets as w

    models = models or model_choices()
    if not models:
        raise FileNotFoundError("no trained model found under checkpoints/ or dist/: run `make demo` first")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="so8t-demo-"))
    agents: dict[tuple[str, float], Agent] = {}
    request = w.Textarea(placeholder="Type a request (日本語 or English)", layout=w.Layout(width="100%", height="70px"))
    context = w.Text(placeholder="Context (optional): who asks, which department", layout=w.Layout(width="100%"))
    model = w.Dropdown(options=models, value=models[0], description="model")
    slider = w.FloatSlider(value=threshold, min=0.5, max=0.99, step=0.01, description="threshold")
    button = w.Button(description="Decide", button_style="primary")
    output = w.HTML()

    def decide(_=None) -> None:
        key = (model.value, round(slider.value, 2))
        if key not in agents:
            agents[key] = make_agent(model.value, slider.value, log_dir)
        result = agents[key].run_agent(context.value or None, request.value)
        output.value = render_result(result, agents[key])

    def example(req: str, ctx: str):
        def fill(_=None) -> None:
            request.value, context.value = req, ctx or ""
            decide()
        return fill

    button.on_click(decide)
    example_buttons = []
    for req, ctx in EXAMPLE_REQUESTS:
        b = w.Button(description=(req[:28] + "…") if len(req) > 28 else req, layout=w.Layout(width="auto"))
        b.on_click(example(req, ctx))
        example_buttons.append(b)
    app = w.VBox([w.HTML("<h3>SO8T safety gate</h3>"), request, context, w.HBox([model, slider, button]),
                  w.HBox(example_buttons), output])
    app.decide_button, app.example_buttons, app.result_html = button, example_buttons, output
    app.request_box, app.context_box = request, context
    return app
