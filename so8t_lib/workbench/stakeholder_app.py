"""The stakeholder demo: an ipywidgets app over the real agent runtime (notebook 05, served by
``so8t present`` through Voilà).

Type a request (Japanese or English) and its context, pick a model and a threshold, press Decide: the
page shows the decision the runtime returned, a confidence bar per class, the answer or the reason, and
where an escalation would go. It runs the production ``Agent`` in test mode (audit records marked as
tests, nobody notified), logging to its own folder. Whatever goes wrong (no model, a model that cannot
load, a request the gate fails closed on, a bug) is shown as a message on the page, never a traceback:
the audience is not technical.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..model.prompts import EXAMPLE_REQUESTS
from ..serve.backends import is_gguf_path
from ..serve.config import RuntimeConfig
from ..serve.runtime import Agent
from ..serve.textforms import clean_text
from .stakeholder_view import (
    NO_MODEL,
    THRESHOLD_RANGE,
    DemoSettings,
    demo_settings,
    log_folder_problem,
    model_label,
    render_message,
    render_result,
)

logger = logging.getLogger("so8t.demo")
INTRO = ("<h2 style='margin-bottom:4px'>SO8T safety gate</h2><div style='color:#444'>An employee's request goes to "
         "the gate first. It decides <b style='color:#2e7d32'>ALLOW</b> (the assistant answers), "
         "<b style='color:#c62828'>REFUSE</b> (it declines, with a reason) or <b style='color:#ef6c00'>ESCALATE</b> "
         "(a person with the right role decides). Demo mode: records are marked as tests and nobody is notified."
         "</div>")
IDLE = render_message("info", "Type a request or pick an example, then press Decide.")
CHANGED = render_message("info", "The model or the threshold changed: press Decide to see what this setting "
                         "decides.")


def make_agent(model_path: str, threshold: float, log_dir: str | Path, decider=None) -> Agent:
    """The production agent on one model and threshold, in test mode, writing only under ``log_dir``."""
    gguf = is_gguf_path(model_path)
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": model_path, "use_gguf": gguf, "gguf_path": model_path if gguf else None},
        "inference": {"safety_threshold": threshold, "max_tokens": 64},
        "logging": {"audit_log": str(Path(log_dir) / "audit.jsonl")},
        "escalation": {"queue_db": str(Path(log_dir) / "escalations.sqlite"), "enable_notifications": False},
    })
    return Agent(cfg, decider=decider, test_mode=True, log_dir=str(log_dir))  # never SO8T_LOG_DIR's folder


AgentFactory = Callable[[str, float, "str | Path", object], Agent]


class StakeholderApp:
    """The page's widgets and state. Displayed as its ``widget``; the buttons work headless
    (``app.decide_button.click()``), which is how the tests drive it without a browser."""

    def __init__(self, settings: DemoSettings, log_dir: Path, agent_factory: AgentFactory = make_agent,
                 problem: str | None = None) -> None:
        """``problem``: why the page cannot decide at all (a log folder it cannot write), shown instead of it."""
        import ipywidgets as w

        self.settings, self.log_dir, self.agent_factory = settings, log_dir, agent_factory
        self.agent: Agent | None = None
        self._agent_key: tuple[str, float] | None = None
        self._deciders: dict[str, object] = {}  # one load per model; a new threshold reuses it
        self._users: dict[str, Agent] = {}  # the agent that last called each model (busy after a timeout?)
        self.last_result: dict | None = None
        low, high = THRESHOLD_RANGE
        self.request_box = w.Textarea(placeholder="Type a request (日本語 or English)",
                                      layout=w.Layout(width="auto", height="80px"))
        self.context_box = w.Text(placeholder="Context (optional): who asks, which department",
                                  layout=w.Layout(width="auto"))
        self.model_picker = w.Dropdown(options=settings.choices, value=settings.selected, description="Model",
                                       layout=w.Layout(width="460px"))
        self.threshold_slider = w.FloatSlider(value=settings.threshold, min=low, max=high, step=0.01,
                                              description="Threshold", continuous_update=False, readout_format=".2f")
        self.decide_button = w.Button(description="Decide", button_style="primary")
        self.status_html = w.HTML()
        self.result_html = w.HTML(IDLE)
        self.log_output = w.Output()  # loading bars, warnings, logs: kept off the page, one click away
        self.example_buttons = []
        for request, context in EXAMPLE_REQUESTS:
            button = w.Button(description=request if len(request) <= 30 else request[:29] + "…", tooltip=request,
                              layout=w.Layout(width="auto"))
            button.on_click(self._example(request, context))
            button.add_class("so8t-example")
            self.example_buttons.append(button)
        self.decide_button.on_click(self.decide)
        self.model_picker.observe(self._reload, names="value")
        self.threshold_slider.observe(self._reload, names="value")
        self.widget = w.VBox([
            w.HTML(INTRO), self.status_html, self.request_box, self.context_box,
            w.HBox([self.model_picker, self.threshold_slider, self.decide_button]),
            w.HBox([w.Label("Examples:"), *self.example_buttons], layout=w.Layout(flex_flow="row wrap")),
            self.result_html, w.Accordion([self.log_output], titles=("Log (for engineers)",), selected_index=None)],
            layout=w.Layout(max_width="980px"))
        for widget, name in ((self.widget, "so8t-app"), (self.request_box, "so8t-request-box"),
                             (self.context_box, "so8t-context-box"), (self.decide_button, "so8t-decide")):
            widget.add_class(name)  # what the browser tests and the screenshot find the page's parts by
        if problem or settings.selected is None:
            self.status_html.value = (render_message("error", f"The demo cannot start: {problem}") if problem
                                      else render_message("warning", NO_MODEL, escape=False))
            self.result_html.value = ""
            for control in (self.request_box, self.context_box, self.model_picker, self.threshold_slider,
                            self.decide_button, *self.example_buttons):
                control.disabled = True
        else:
            with self.log_output:
                self._load()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ----- the agent ------------------------------------------------------------------------------
    def _reload(self, _=None) -> None:
        """A new model or threshold: the shown decision was made under the old one (an ALLOW could stay
        under a model that fails closed), so the result area goes back to a prompt before loading."""
        self.last_result = None
        self.result_html.value = CHANGED
        with self.log_output:
            self._load()

    def _load(self) -> Agent | None:
        """The agent for the picked model and threshold (a new one when either changed); the status line
        says which model decides, or why it cannot."""
        model, threshold = self.model_picker.value, float(self.threshold_slider.value)  # as asked: never rounded down
        if self._agent_key == (model, threshold) and self.agent is not None:
            # back to the loaded setting after one that failed: the line must stop saying the gate is not set up
            self.status_html.value = self._status(self.agent, model, threshold)
            return self.agent
        self.status_html.value = render_message("info", f"Loading {model_label(model)} …")
        decider, last_user = self._deciders.get(model), self._users.get(model)
        if decider is not None and last_user is not None and last_user.model_busy():
            # a call that timed out still runs inside it: a second thread in llama.cpp aborts the kernel
            logger.warning("%s is still busy with a request that timed out; loading a fresh copy", model)
            decider = None
        try:
            agent = self.agent_factory(model, threshold, self.log_dir, decider)
        except Exception as exc:  # noqa: BLE001 - the page says what went wrong instead of a traceback
            logger.exception("the demo's agent could not be set up")
            self.status_html.value = render_message("error", f"The gate could not be set up for {model}: "
                                                    f"{type(exc).__name__}: {exc}")
            return None
        if self.agent is not None:
            self.agent.close()
        self.agent, self._agent_key = agent, (model, threshold)
        if agent.decider is not None:
            self._deciders[model], self._users[model] = agent.decider, agent
        self.status_html.value = self._status(agent, model, threshold)
        return agent

    def _status(self, agent: Agent, model: str, threshold: float) -> str:
        notes = "".join(render_message("warning", note) for note in self.settings.notes)
        if agent.load_error:
            return notes + render_message(
                "error", f"{model_label(model)} ({model}): every request fails closed (ESCALATE) until another "
                f"model is picked, because the {agent.load_error}")
        return notes + render_message("info", f"Deciding with {model_label(model)} ({model}), version "
                                      f"{agent.model_version}; threshold {threshold:g}.")

    # ----- deciding -------------------------------------------------------------------------------
    def decide(self, _=None) -> None:
        """Decide what the request box holds and show the runtime's result (or a message)."""
        request, context = self.request_box.value, self.context_box.value.strip() or None
        self.last_result = None  # from here on the page no longer shows it, whatever happens to this request
        if not clean_text(request)[0].strip():  # as the runtime reads it: zero-width characters are nothing
            self.result_html.value = render_message("info", "Type a request first (Japanese or English), or pick "
                                                    "an example.")
            return
        self.decide_button.disabled = True
        self.result_html.value = render_message("info", "Deciding …")
        with self.log_output:
            self._decide(request, context)

    def _decide(self, request: str, context: str | None) -> None:
        try:
            agent = self._load()
            if agent is None:
                self.result_html.value = render_message("error", "No decision: the gate is not set up (see the "
                                                        "message above).")
                return
            result = agent.run_agent(context, request)
            self.last_result = result
            route = agent.config.escalation.routes.get(result.get("category") or "")
            self.result_html.value = render_result(result, request, agent.config.inference.safety_threshold,
                                                   route.model_dump() if route is not None else None)
        except Exception as exc:  # noqa: BLE001 - a message, never a traceback
            logger.exception("the demo could not show a decision")
            self.result_html.value = render_message("error", f"Something went wrong, no decision is shown: "
                                                    f"{type(exc).__name__}: {exc}")
        finally:
            self.decide_button.disabled = False

    def _example(self, request: str, context: str | None) -> Callable:
        def fill(_=None) -> None:
            self.request_box.value, self.context_box.value = request, context or ""
            self.decide()
        return fill

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()


def build_app(models: list[str] | None = None, threshold: float | None = None, log_dir: str | Path | None = None,
              model: str | None = None, agent_factory: AgentFactory = make_agent) -> StakeholderApp:
    """The app for notebook 05. Unset arguments come from ``$SO8T_DEMO_MODEL``, ``$SO8T_DEMO_THRESHOLD`` and
    ``$SO8T_DEMO_LOG_DIR`` (set by ``so8t present``), then the defaults: every model under checkpoints/
    and dist/, the pretrained default's Q4_K_M file first, threshold 0.8, a temporary log folder."""
    settings = demo_settings(models, model, threshold, str(log_dir) if log_dir else None)
    folder = Path(settings.log_dir) if settings.log_dir else Path(tempfile.mkdtemp(prefix="so8t-demo-"))
    return StakeholderApp(settings, folder, agent_factory, problem=log_folder_problem(folder))
