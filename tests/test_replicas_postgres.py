"""Two `so8t serve` processes (replicas r1 and r2, one log folder) on one PostgreSQL queue, under load:
clients send single requests and lists to both at once while reviewers race to resolve every case
through both servers at the same moment. No case may be lost (every ESCALATE answer's case is in the
queue, with its decision record in exactly one chain) and none resolved twice (one 200 and one 409 per
race, one resolution in the case's history, one resolution record over both chains)."""

from __future__ import annotations

import queue as queue_mod
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from ops_fixtures import ServeProcess
from pg_support import cluster
from service_support import CLIENT, OTHER_CLIENT, REVIEWER

from so8t_lib.serve.audit_verify import read_chains, verify_chains
from so8t_lib.serve.escalation import EscalationQueue

CLIENTS, CALLS, LIST_SIZE = 4, 4, 3  # each client: CALLS calls, every other one a list of LIST_SIZE requests
REPLICAS = ("r1", "r2")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Both servers on the shared folder and the queue URL; stopped (SIGTERM) after the module."""
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    url = cluster().database()
    root = tmp_path_factory.mktemp("replicas")
    SO8TModel.from_config(ModelConfig(name="so8t-replica")).save(root / "ckpt")
    config = {"model": {"checkpoint_path": "ckpt"},  # untrained: below the threshold, so every request escalates
              "inference": {"generate_responses": False, "safety_threshold": 0.99, "decision_timeout_s": 60},
              "logging": {"audit_log": "logs/audit.jsonl", "log_level": "WARNING"},
              "escalation": {"queue_db": "logs/escalations.sqlite", "enable_notifications": False,
                             "queue_timeout_s": 30, "retry_interval_s": 1},  # a slow machine queues, never spools
              "service": {"rate_limit_per_minute": 100000, "rate_limit_burst": 10000}}
    (root / "serve.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with ThreadPoolExecutor(2) as pool:  # start both at once: each loads the model
        started = [pool.submit(ServeProcess, root, "--config", "serve.yaml", "--log-dir", "logs",
                               env={"SO8T_REPLICA": name, "SO8T_ESCALATION_URL": url}) for name in REPLICAS]
        servers = [f.result() for f in started]
    yield servers, url, root / "logs"
    for server in servers:
        server.stop()


def _client(servers, n: int, cases: queue_mod.Queue, answers: list) -> None:
    """CALLS calls alternating between the servers; each escalated case goes to the reviewers at once."""
    headers = CLIENT if n % 2 else OTHER_CLIENT
    with httpx.Client(timeout=120) as http:
        for call in range(CALLS):
            server = servers[(n + call) % 2]
            body = [{"user_request": f"経費の申請 {n}-{call}-{i}", "user_id": f"u{n}"} for i in range(LIST_SIZE)] \
                if call % 2 else {"user_request": f"Please approve the offsite budget {n}-{call}", "user_id": f"u{n}"}
            response = http.post(f"{server.url}/v1/decide", json=body, headers=headers)
            assert response.status_code == 200, response.text
            for answer in response.json() if call % 2 else [response.json()]:
                answers.append(answer)
                if answer.get("escalation_id"):
                    cases.put(answer["escalation_id"])


def _race(servers, case_id: str) -> list[int]:
    """Resolve one case through both servers at the same moment, with different decisions."""
    barrier = threading.Barrier(2, timeout=60)

    def resolve(server, decision: str) -> int:
        with httpx.Client(timeout=120) as http:
            barrier.wait()
            return http.post(f"{server.url}/v1/escalations/{case_id}/resolve", headers=REVIEWER,
                             json={"decision": decision, "by": f"desk via {server.url}"}).status_code

    with ThreadPoolExecutor(2) as pool:
        return sorted(pool.map(resolve, servers, ("ALLOW", "REFUSE")))


def test_two_servers_on_one_postgresql_queue_lose_no_case_and_resolve_none_twice(replicas):
    servers, url, logs = replicas
    cases: queue_mod.Queue[str | None] = queue_mod.Queue()
    answers: list[dict] = []
    races: dict[str, list[int]] = {}

    def reviewers() -> None:
        with ThreadPoolExecutor(2) as pool:
            pending = {}
            while (case_id := cases.get()) is not None:
                pending[case_id] = pool.submit(_race, servers, case_id)
            races.update({case_id: future.result() for case_id, future in pending.items()})

    desk = threading.Thread(target=reviewers)
    desk.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            for done in [pool.submit(_client, servers, n, cases, answers) for n in range(CLIENTS)]:
                done.result()
    finally:
        cases.put(None)  # the reviewers finish the races already started, then stop
        desk.join(300)

    expected = CLIENTS * (CALLS // 2 + (CALLS // 2) * LIST_SIZE)
    assert len(answers) == expected and {a["decision"] for a in answers} == {"ESCALATE"}
    assert {a["escalation_status"] for a in answers} == {"queued"}, [a["error"] for a in answers if a["error"]]
    escalated = {a["escalation_id"] for a in answers}
    assert len(escalated) == expected and set(races) == escalated
    assert {tuple(codes) for codes in races.values()} == {(200, 409)}  # one reviewer wins each race

    store = EscalationQueue(url, create=False)
    try:
        listed = store.list()
        assert {c["case_id"] for c in listed} == escalated and len(listed) == expected  # none lost, none extra
        assert {c["status"] for c in listed} == {"resolved"}
        assert all(len(store.history(c["case_id"])) == 1 for c in listed)  # resolved once
    finally:
        store.close()

    for server in servers:  # SIGTERM: each replica finishes and closes its own chain
        assert server.stop() in (0, -15, 143)
    verification = verify_chains(logs)
    assert sorted(Path(chain).name for chain in verification) == ["audit-r1.jsonl", "audit-r2.jsonl"]
    assert all(not r["errors"] for r in verification.values()), verification
    records = [record for _, record in read_chains(logs)]
    decided = [r["request_id"] for r in records if r.get("event", "decision") == "decision"]
    resolved = [r["case_id"] for r in records if r.get("event") == "resolution"]
    assert sorted(decided) == sorted(a["request_id"] for a in answers)  # one decision record per answer
    assert sorted(resolved) == sorted(escalated)  # one resolution record per case, over both chains
    assert all(verification[str(logs / f"audit-{name}.jsonl")]["records"] > 0 for name in REPLICAS)
