"""The stakeholder app without a browser: it shows what the runtime returned (decision, every class's
confidence, the answer or the reason, where an escalation goes), turns every failure into a message, and
finds its models and settings the way ``so8t present`` passes them. A fixed-probability decider makes each
decision happen on purpose; tests/test_browser.py drives the same app through Voilà in Chromium."""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from so8t_lib.core.schema import LABELS  # noqa: E402
from so8t_lib.workbench import stakeholder_view as view  # noqa: E402
from so8t_lib.workbench.stakeholder_app import build_app, make_agent  # noqa: E402


class FixedDecider:
    """Always the same probabilities; counts its calls; can be told to break."""

    model_version = "fixed@test"

    def __init__(self, probs, answer: str = "Open Task Manager and end the process.", broken: bool = False):
        self.probs, self.answer, self.broken, self.calls = np.asarray(probs, dtype=float), answer, broken, 0

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        self.calls += 1
        if self.broken:
            raise RuntimeError("the weights are on fire")
        return np.tile(self.probs, (len(requests), 1))

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return self.answer


def app_with(tmp_path, decider, threshold=0.8, loads=None):
    def factory(model, threshold, log_dir, cached):
        if loads is not None:
            loads.append(cached is None)
        return make_agent(model, threshold, log_dir, cached or decider)

    return build_app(["fixed-model"], threshold, tmp_path / "logs", agent_factory=factory)


def audit(tmp_path) -> list[dict]:
    path = tmp_path / "logs" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def shown_probabilities(html: str) -> dict[str, float]:
    import re

    return {label: float(value) for label, value in re.findall(r'data-label="(\w+)" data-value="([0-9.e-]+)"', html)}


def test_allow_shows_the_answer_and_each_class_confidence(tmp_path):
    app = app_with(tmp_path, FixedDecider([0.9, 0.06, 0.04]))
    app.example_buttons[0].click()
    html, result = app.result_html.value, app.last_result
    assert result["decision"] == "ALLOW" and 'data-decision="ALLOW"' in html
    assert "Open Task Manager and end the process." in html and "so8t-route" not in html
    assert shown_probabilities(html) == pytest.approx(dict(zip(LABELS, [0.9, 0.06, 0.04])))
    assert "90.0%" in html and "6.0%" in html and "4.0%" in html
    assert [r["decision"] for r in audit(tmp_path)] == ["ALLOW"] and audit(tmp_path)[0]["test"] is True


def test_refuse_shows_the_reason(tmp_path):
    app = app_with(tmp_path, FixedDecider([0.05, 0.9, 0.05]))
    app.request_box.value = "Give me a list of my colleagues' home addresses."
    app.decide_button.click()
    html = app.result_html.value
    assert app.last_result["decision"] == "REFUSE" and 'data-decision="REFUSE"' in html
    assert "so8t-reason" in html and "declined" in html and "so8t-answer" not in html


def test_escalate_shows_who_gets_the_case(tmp_path):
    app = app_with(tmp_path, FixedDecider([0.4, 0.3, 0.3]))  # nothing reaches 0.8: a person decides
    app.example_buttons[2].click()  # a colleague's health check results: the medical route
    html, result = app.result_html.value, app.last_result
    assert result["decision"] == "ESCALATE" and result["category"] == "medical"
    assert "medical staff" in html and "medical@company.com" in html and "#medical-escalation" in html
    assert result["escalation_id"] in html and result["escalation_status"] in html and "nobody is notified" in html
    assert app.context_box.value == "Manager in the sales team"


def test_the_threshold_changes_the_rule_and_reuses_the_loaded_model(tmp_path):
    loads: list[bool] = []
    decider = FixedDecider([0.85, 0.1, 0.05])
    app = app_with(tmp_path, decider, threshold=0.8, loads=loads)
    app.example_buttons[0].click()
    assert app.last_result["decision"] == "ALLOW"
    app.threshold_slider.value = 0.9
    app.example_buttons[0].click()
    assert app.last_result["decision"] == "ESCALATE" and "reaches 0.9," in app.result_html.value
    assert loads == [True, False], "a new threshold is a new agent on the same loaded model"
    assert decider.calls == 2


def test_a_threshold_between_the_slider_steps_is_kept_as_asked_never_rounded_down(tmp_path):
    """0.804 became 0.80, so p(ALLOW) 0.802 was allowed under a threshold asked to refuse it to the model."""
    app = app_with(tmp_path, FixedDecider([0.802, 0.1, 0.098]), threshold=0.804)
    app.example_buttons[0].click()
    assert app.last_result["decision"] == "ESCALATE" and "threshold 0.804." in app.status_html.value


def test_a_model_still_busy_with_a_timed_out_call_is_not_shared_with_the_next_agent(tmp_path):
    """A threshold change built a new agent on the cached model while the old agent's timed-out call still ran
    inside it: two threads in llama.cpp abort the kernel."""
    import threading

    release = threading.Event()

    class SlowOnce(FixedDecider):
        def decide(self, requests, contexts=None, batch_size=32, progress=False):
            if self.calls == 0:
                release.wait(10)
            return super().decide(requests, contexts, batch_size, progress)

    loads: list[bool] = []
    app = app_with(tmp_path, SlowOnce([0.85, 0.1, 0.05]), loads=loads)
    app.agent.config.inference.decision_timeout_s = 0.2
    app.example_buttons[0].click()
    assert app.last_result["decision"] == "ESCALATE" and "timeout" in app.last_result["error"]
    app.threshold_slider.value = 0.9  # while the first call still runs in the model
    assert loads == [True, True], "a fresh copy of the model, not the one still busy"
    release.set()
    app.threshold_slider.value = 0.85
    assert loads == [True, True, False], "the agent that took over is not busy: its model is reused"


def test_an_escalation_nobody_will_receive_is_not_shown_as_handed_over():
    result = {"decision": "ESCALATE", "request_id": "req_1", "flags": ["escalation_unqueued", "audit_write_failed"],
              "error": "NotADirectoryError: logs", "escalation_status": "unqueued", "escalation_id": "esc_1",
              "rationale": "This needs a person; it has been passed to your direct manager.", "category": "hr",
              "probabilities": {"ALLOW": 0.1, "REFUSE": 0.1, "ESCALATE": 0.8}, "model_version": "m@1"}
    html = view.render_result(result, "Can I see the payroll?", 0.8, {"notify": "HR", "email": "hr@example.com"})
    assert "nobody will receive it" in html and "passed to" not in html and "Goes to" not in html
    queued = view.render_result({**result, "flags": [], "error": None, "escalation_status": "queued"},
                                "Can I see the payroll?", 0.8, {"notify": "HR", "email": "hr@example.com"})
    assert "passed to your direct manager" in queued and "Goes to" in queued and "nobody will" not in queued


def test_a_new_model_or_threshold_clears_the_old_decision(tmp_path):
    """The shown decision belongs to the setting it was made under: an ALLOW must not stay on the page
    after the threshold moves, nor under a newly picked model that cannot load (every request fails closed)."""
    def factory(model, threshold, log_dir, cached):
        return make_agent(model, threshold, log_dir, cached or (FixedDecider([0.97, 0.02, 0.01])
                                                               if model == "good-model" else None))

    app = build_app(["good-model", str(tmp_path / "missing.gguf")], 0.8, tmp_path / "logs", model="good-model",
                    agent_factory=factory)
    app.example_buttons[0].click()
    assert 'data-decision="ALLOW"' in app.result_html.value
    app.threshold_slider.value = 0.99
    assert "data-decision" not in app.result_html.value and app.last_result is None
    assert "press Decide" in app.result_html.value

    app.threshold_slider.value = 0.8
    app.example_buttons[0].click()
    assert 'data-decision="ALLOW"' in app.result_html.value
    app.model_picker.value = str(tmp_path / "missing.gguf")
    assert "fails closed" in app.status_html.value
    assert "data-decision" not in app.result_html.value and app.last_result is None


def test_failures_are_messages_never_tracebacks(tmp_path):
    app = app_with(tmp_path, FixedDecider([0.3, 0.3, 0.4], broken=True))
    for blank in ("   ", "\u200b\u200b", "\u00a0\u3000"):  # zero-width characters are nothing to the runtime too
        app.request_box.value = blank
        app.decide_button.click()
        assert 'data-kind="info"' in app.result_html.value and "Type a request first" in app.result_html.value
    assert audit(tmp_path) == [], "an empty box is not sent to the gate"

    app.request_box.value = "経費精算の締め日はいつですか？"
    app.decide_button.click()  # the model raises: the runtime fails closed and the page says why
    html = app.result_html.value
    assert 'data-decision="ESCALATE"' in html and "failed closed" in html and "the weights are on fire" in html

    app.request_box.value = "x" * 5000  # longer than the runtime accepts
    app.decide_button.click()
    assert "failed closed" in app.result_html.value and "invalid input" in app.result_html.value
    assert not app.decide_button.disabled and "Traceback" not in app.result_html.value + app.status_html.value


def test_a_gate_that_cannot_be_set_up_is_a_message(tmp_path):
    def broken_factory(*args):
        raise PermissionError("logs/ is read-only")

    app = build_app(["some-model"], 0.8, tmp_path / "logs", agent_factory=broken_factory)
    assert 'data-kind="error"' in app.status_html.value and "logs/ is read-only" in app.status_html.value
    app.example_buttons[1].click()
    assert 'data-kind="error"' in app.result_html.value and "not set up" in app.result_html.value



def test_going_back_to_a_working_model_clears_the_set_up_error(tmp_path):
    """The status line said "could not be set up" for the model picked before, while the working model decided."""
    def factory(model, threshold, log_dir, cached):
        if model == "bad-model":
            raise PermissionError("bad-model: weights unreadable")
        return make_agent(model, threshold, log_dir, cached or FixedDecider([0.97, 0.02, 0.01]))

    app = build_app(["good-model", "bad-model"], 0.8, tmp_path / "logs", model="good-model", agent_factory=factory)
    app.model_picker.value = "bad-model"
    assert "could not be set up" in app.status_html.value
    app.model_picker.value = "good-model"
    assert "could not be set up" not in app.status_html.value and "Deciding with" in app.status_html.value
    app.example_buttons[0].click()
    assert 'data-decision="ALLOW"' in app.result_html.value and "could not be set up" not in app.status_html.value


def test_a_decision_that_is_no_longer_shown_is_not_the_last_result(tmp_path):
    """After an empty box, or a gate that cannot be set up, the page shows no decision: ``last_result`` must not
    still hold the one shown before."""
    state = {"broken": False}

    def factory(model, threshold, log_dir, cached):
        if state["broken"]:
            raise PermissionError("logs/ is read-only")
        return make_agent(model, threshold, log_dir, cached or FixedDecider([0.97, 0.02, 0.01]))

    app = build_app(["fixed-model"], 0.8, tmp_path / "logs", agent_factory=factory)
    app.example_buttons[0].click()
    assert app.last_result["decision"] == "ALLOW"
    app.request_box.value = "  "
    app.decide_button.click()
    assert "Type a request first" in app.result_html.value and app.last_result is None

    app.example_buttons[0].click()
    assert app.last_result["decision"] == "ALLOW"
    state["broken"] = True
    app.agent.close()
    app.agent = None  # the next decide sets the gate up again, and that fails
    app.example_buttons[0].click()
    assert "not set up" in app.result_html.value and app.last_result is None

def test_a_model_file_that_cannot_load_is_named_and_every_request_fails_closed(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf file")
    app = build_app([str(broken)], 0.8, tmp_path / "logs")
    assert 'data-kind="error"' in app.status_html.value and "could not be loaded" in app.status_html.value
    app.example_buttons[3].click()
    assert app.last_result["decision"] == "ESCALATE" and "fail_closed" in app.last_result["flags"]
    assert "could not be loaded" in app.result_html.value


def test_without_any_model_the_page_says_to_run_make_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/ and no dist/ here
    monkeypatch.delenv(view.ENV_MODEL, raising=False)
    app = build_app(log_dir=tmp_path / "logs")
    assert "make demo" in app.status_html.value and 'data-kind="warning"' in app.status_html.value
    assert app.decide_button.disabled and all(b.disabled for b in app.example_buttons)


def test_models_are_found_and_the_pretrained_default_opens_first(tmp_path):
    for folder in ("checkpoints/so8t-demo/best", "checkpoints/so8t-tiny/last", "checkpoints/scratch"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "checkpoints/so8t-demo/best/so8t_model.yaml").write_text("{}")
    (tmp_path / "checkpoints/so8t-tiny/last/so8t_model.yaml").write_text("{}")
    (tmp_path / "dist").mkdir()
    for name in ("so8t-demo-f16.gguf", "so8t-demo-q4_k_m.gguf", "so8t-tiny-q4_k_m.gguf"):
        (tmp_path / "dist" / name).write_bytes(b"")
    found = view.find_models(tmp_path)
    assert found == ["checkpoints/so8t-demo", "checkpoints/so8t-tiny", "dist/so8t-demo-f16.gguf",
                     "dist/so8t-demo-q4_k_m.gguf", "dist/so8t-tiny-q4_k_m.gguf"]
    assert view.default_model(found) == "dist/so8t-demo-q4_k_m.gguf"
    assert view.default_model([f for f in found if "demo-q4" not in f]) == "dist/so8t-tiny-q4_k_m.gguf"
    assert view.default_model(found[:2]) == "checkpoints/so8t-demo" and view.default_model([]) is None
    assert view.model_label("dist/so8t-demo-q4_k_m.gguf") == "so8t-demo · Q4_K_M (GGUF)"
    assert view.model_label("checkpoints/so8t-tiny") == "so8t-tiny · checkpoint"


def test_settings_come_from_parameters_then_environment_then_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {view.ENV_MODEL: "dist/x.gguf", view.ENV_THRESHOLD: "0.9", view.ENV_LOG_DIR: "/tmp/demo-logs"}
    s = view.demo_settings(["a", "b"], environ=env)
    assert (s.models, s.selected, s.threshold, s.log_dir, s.notes) == (["dist/x.gguf", "a", "b"], "dist/x.gguf", 0.9,
                                                                      "/tmp/demo-logs", [])
    s = view.demo_settings(["a", "b"], model="b", threshold=0.7, log_dir="mine", environ=env)
    assert (s.models, s.selected, s.threshold, s.log_dir) == (["a", "b"], "b", 0.7, "mine")
    s = view.demo_settings(["a"], environ={view.ENV_THRESHOLD: "high"})
    assert s.threshold == 0.8 and "not a number" in s.notes[0] and s.selected == "a"
    assert "outside" in view.demo_settings(["a"], threshold=0.3, environ={}).notes[0]
    assert view.demo_settings(["a", "a2"], environ={}).choices == [("a · checkpoint", "a"), ("a2 · checkpoint", "a2")]


def test_what_was_typed_is_shown_as_text_not_markup():
    result = {"decision": "REFUSE", "rationale": "<b>no</b>", "probabilities": dict(zip(LABELS, [0.1, 0.8, 0.1])),
              "category": "general", "request_id": "req_1", "model_version": "m", "flags": [], "error": None}
    html = view.render_result(result, "<script>alert(1)</script>", 0.8, None)
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;no&lt;/b&gt;" in html


def test_so8t_present_refuses_a_taken_port_and_a_missing_model(tmp_path, capsys, monkeypatch):
    pytest.importorskip("voila")
    monkeypatch.chdir(tmp_path)  # present moves to the project root; this puts the test's folder back after
    from so8t_lib.cli import main as so8t

    assert so8t(["present", "--model", str(tmp_path / "nothing.gguf"), "--no-browser"]) == 2
    assert "no such file" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert so8t(["present", "--port", str(port), "--no-browser", "--log-dir", str(tmp_path / "logs")]) == 2
    assert f"port {port}" in capsys.readouterr().err


def test_voila_runs_the_notebook_on_the_so8t_kernel_or_one_written_for_this_python(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    from so8t_lib.workbench import stakeholder_server as server

    cmd = server.voila_command(8866)
    assert cmd[:3] == [sys.executable, "-m", "voila"] and "--Voila.ip=127.0.0.1" in cmd and "--no-browser" in cmd
    assert "--Voila.port_retries=0" in cmd and "--strip_sources=True" in cmd and "--show_tracebacks=False" in cmd
    env = server.present_environment("dist/m.gguf", 0.9, None, base={view.ENV_LOG_DIR: "old"})
    assert env == {view.ENV_MODEL: "dist/m.gguf", view.ENV_THRESHOLD: "0.9"}
    monkeypatch.setattr(KernelSpecManager, "find_kernel_specs", lambda self: {})
    env = server.kernel_environment({"JUPYTER_PATH": "/elsewhere"}, tmp_path)
    assert env["JUPYTER_PATH"].split(":") == [str(tmp_path), "/elsewhere"]
    spec = json.loads((tmp_path / "kernels" / "so8t" / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable


def test_one_model_given_as_a_string_is_one_model_and_a_threshold_that_is_no_number_is_a_note():
    """papermill -p models x gives notebook 05 a string: it was offered as one model per character."""
    s = view.demo_settings("dist/so8t-demo-q4_k_m.gguf", environ={})
    assert (s.models, s.selected) == (["dist/so8t-demo-q4_k_m.gguf"], "dist/so8t-demo-q4_k_m.gguf")
    assert view.demo_settings(["a"], threshold="0.9", environ={}).threshold == 0.9  # -p threshold 0.9 as text
    for bad, note in (("high", "not a number"), (True, "not a number"), (float("nan"), "outside")):
        s = view.demo_settings(["a"], threshold=bad, environ={})  # a TypeError before; True was taken as 1.0
        assert s.threshold == 0.8 and s.notes[0].startswith("threshold") and note in s.notes[0], s.notes


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_log_folder_that_cannot_be_made_is_the_page_s_message_not_a_cell_error(tmp_path, where):
    (tmp_path / "afile").write_text("x")
    log_dir = tmp_path / "afile" if where == "a file" else tmp_path / "afile" / "logs"
    made = []
    app = build_app(["fixed-model"], 0.8, log_dir, agent_factory=lambda *a: made.append(a))
    assert 'data-kind="error"' in app.status_html.value and str(log_dir) in app.status_html.value
    assert "cannot be made or written" in app.status_html.value and not made  # no agent writing into it
    assert app.decide_button.disabled and app.request_box.disabled and all(b.disabled for b in app.example_buttons)


def test_so8t_present_refuses_a_log_folder_a_port_and_a_timeout_it_cannot_use_before_starting_voila(
        tmp_path, capsys, monkeypatch):
    pytest.importorskip("voila")
    monkeypatch.chdir(tmp_path)
    from so8t_lib.cli import main as so8t
    from so8t_lib.workbench import stakeholder_server as server

    monkeypatch.setattr(server.LocalServer, "start", lambda self: pytest.fail("Voilà was started"))
    (tmp_path / "afile").write_text("x")
    assert so8t(["present", "--no-browser", "--log-dir", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert f"so8t present: the log folder {tmp_path / 'afile'} cannot be made or written" in err
    for option, value in (("--port", "70000"), ("--port", "-1"), ("--timeout", "nan"), ("--timeout", "0")):
        with pytest.raises(SystemExit) as stopped:
            so8t(["present", "--no-browser", option, value, "--log-dir", str(tmp_path / "logs")])
        assert stopped.value.code == 2 and f"argument {option}: expected" in capsys.readouterr().err
    assert not server.port_is_free(70000)  # no port at all: not free, and no OverflowError
