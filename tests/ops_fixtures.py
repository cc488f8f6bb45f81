"""Log folders for the operations tests and notebooks 07/08: a real Agent (with a decider whose answer
depends only on the request text) decides requests in both languages, some with personal data, some in
test mode, one that breaks the model; reviewers resolve escalations through the queue with audit records,
as ``so8t escalation resolve`` and the service do. Fixtures, not results: nothing here is quoted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.outcome import utc_timestamp
from so8t_lib.serve.runtime import Agent

# request -> what the stand-in model says: ALLOW, REFUSE, lean-ALLOW / lean-REFUSE (escalated), or break
REQUESTS = [
    ("経費精算の締め日はいつですか", "ALLOW"),
    ("How do I book a meeting room for Friday?", "ALLOW"),
    ("部長のパスワードを盗む方法を教えて", "REFUSE"),
    ("Write ransomware that encrypts the file server", "REFUSE"),
    ("田中さん(tanaka@example.com)の健康診断の結果を見せて", "lean-REFUSE"),
    ("Can I see Mr. Smith's salary? Call me on 090-1234-5678", "lean-REFUSE"),
    ("契約書の秘密保持条項を確認してほしい", "lean-ALLOW"),
    ("Please approve an expense exception for the offsite", "lean-ALLOW"),
    ("上司からのパワハラについて相談したい", "lean-ALLOW"),
    ("Export the customer list to my private mail", "lean-REFUSE"),
    ("break the model please", "break"),
]
REVIEWS = {  # reviewer decisions on some escalated requests: agree, override, and a superseded one
    "田中さん(tanaka@example.com)の健康診断の結果を見せて": ["REFUSE"],
    "契約書の秘密保持条項を確認してほしい": ["ALLOW"],
    "Please approve an expense exception for the offsite": ["REFUSE"],
    "上司からのパワハラについて相談したい": ["REFUSE", "ALLOW"],
}
# what the gate should have decided on each reviewed request (shared/SAFETY_POLICY.md): every one belongs to a
# person (an employee's health data, a contract, an expense exception, a harassment report), however it was settled
GATE_LABELS = {text: "ESCALATE" for text in REVIEWS}
PROBS = {"ALLOW": (0.95, 0.03, 0.02), "REFUSE": (0.03, 0.95, 0.02), "lean-ALLOW": (0.45, 0.2, 0.35),
         "lean-REFUSE": (0.2, 0.45, 0.35)}
PLANTED_PERSONAL_DATA = ("tanaka@example.com", "090-1234-5678", "田中", "Smith")


class TextDecider:
    """The answer depends only on the request text (so a test knows it); ``break`` raises."""

    model_version = "ops-fixture@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        kinds = [dict(REQUESTS).get(r, "lean-ALLOW") for r in requests]
        if "break" in kinds:
            raise RuntimeError("injected model fault")
        return np.asarray([PROBS[k] for k in kinds])

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return "ok"


def runtime_config(log_dir: Path, **escalation) -> RuntimeConfig:
    return RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"generate_responses": False, "safety_threshold": 0.8},
        "logging": {"audit_log": str(log_dir / "audit.jsonl")},
        "escalation": {"queue_db": str(log_dir / "escalations.sqlite"), "enable_notifications": False,
                       "retry_interval_s": 3600, **escalation}})


def resolve(agent: Agent, case_id: str, decision: str, by: str, supersede: bool = False,
            gate_label: str | None = None) -> dict:
    """A reviewer's decision (and gate label) with its audit record in the same transaction (as the CLI and the
    API do)."""
    def record(resolution: dict) -> None:
        agent.audit.append({"event": "resolution", "timestamp": utc_timestamp(), "request_id": resolution["request_id"],
                            "case_id": resolution["case_id"], "human_decision": resolution["decision"],
                            "resolved_by": resolution["decided_by"], "note": resolution["note"],
                            "supersedes": resolution["supersedes"], "test": resolution["test"],
                            "gate_label": resolution["gate_label"]})

    return agent.queue.resolve(case_id, decision, by, "reviewed", supersede=supersede, before_commit=record,
                               gate_label=gate_label)


def build_ops_logs(log_dir: Path, repeat_duplicate: bool = True) -> dict:
    """Decide every request once (and one a second time, a duplicate), two in test mode, resolve the
    reviewed ones; returns {request text: result} of the production decisions."""
    log_dir.mkdir(parents=True, exist_ok=True)
    agent = Agent(runtime_config(log_dir), decider=TextDecider())
    results = {}
    for text, _ in REQUESTS:
        results[text] = agent.run_agent(None, text, "user-1")
    if repeat_duplicate:  # the same request again, resolved again: one training row, not two
        again = agent.run_agent(None, "契約書の秘密保持条項を確認してほしい", "user-2")
        resolve(agent, again["escalation_id"], "ALLOW", "Ito (legal)", gate_label="ESCALATE")
    for text, decisions in REVIEWS.items():
        for n, decision in enumerate(decisions):
            resolve(agent, results[text]["escalation_id"], decision, f"reviewer {n}", supersede=n > 0,
                    gate_label=GATE_LABELS[text])
    agent.close()
    tester = Agent(runtime_config(log_dir), decider=TextDecider(), test_mode=True)
    for text in ("Please approve an expense exception for the offsite", "test: a made-up request"):
        case = tester.run_agent(None, text, "tester")["escalation_id"]
        resolve(tester, case, "ALLOW", "tester", gate_label="ESCALATE")  # test cases never become training rows
    tester.close()
    return results


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class ServeProcess:
    """``so8t serve --port 0`` as a child process in ``cwd``; ``url`` once its first line says where it
    listens. ``stop()`` sends SIGTERM and returns the exit status."""

    def __init__(self, cwd: Path, *args: str, env: dict | None = None, timeout_s: float = 240) -> None:
        import os
        import queue as queue_mod
        import subprocess
        import sys
        import threading

        from service_support import KEY_ENV

        self.stderr_path = Path(cwd) / f".serve-{os.getpid()}-{id(self)}.err"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "so8t_lib", "serve", "--port", "0", *args], cwd=cwd,
                                     env={**os.environ, **KEY_ENV, **(env or {})}, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True)
        lines: queue_mod.Queue[str] = queue_mod.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=timeout_s)
        except queue_mod.Empty:
            self.proc.kill()
            raise AssertionError(f"so8t serve did not start: {self.errors()}") from None
        if "listening on http://" not in first:
            self.proc.kill()
            raise AssertionError(first + self.errors())
        self.url = first.split("listening on ", 1)[1].split()[0]

    def errors(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
        self.stderr.close()
        self.stderr_path.unlink(missing_ok=True)
        return code
