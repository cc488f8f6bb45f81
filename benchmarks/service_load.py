"""so8t serve under load, on loopback, one run: micro-batching vs one request at a time, exact audit
counts, kill -9 in the middle of a burst, and injected model faults.

    python benchmarks/service_load.py [--users 32] [--seconds 30] [--clients 16 --per-client 25]
                                      [--out benchmarks/results/service_load_cpu.json]

1. throughput: for each variant (one request per decision pass; micro-batching) a fresh ``so8t serve``
   process and locust headless (``benchmarks/service_locustfile.py``, ``--users`` closed-loop users, no
   think time, corpus test-split requests) for ``--seconds``; requests/s and p50/p95/p99 from locust.
   The variants alternate ``--repeats`` times and the summary takes medians: on a shared machine the
   load of other work moves single runs by a factor of two.
2. exact counts: ``--clients`` concurrent clients x ``--per-client`` requests -> that many decision
   records, ``so8t audit verify`` clean.
3. kill -9 of the server mid-burst, then a restart on the same folder: every answered decision is in the
   log, none twice, every answered escalation in the queue, the chain verifies.
4. injected faults: the real model wrapped so that a quarter of the texts raise, give NaN, the wrong
   shape or hang past ``decision_timeout_s``, and every other text gets p(ALLOW)=0.97: ALLOW for a
   faulted text would be a fail-open. Counted over HTTP, one request per call.

The model is the tiny preset with random weights, built here, so the run needs no training; its
decisions are arbitrary (mostly ESCALATE, the most expensive path: spool, queue, audit). Servers run
with ``--torch-threads`` (default 1): on a 2-core machine shared with other work, torch's OpenMP
threads spin against the other processes and one decision can take seconds instead of ~20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # serve_process: the child-process server the tests start too

from serve_process import Server, write_config  # noqa: E402

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.serve.audit import read_records, verify  # noqa: E402

CLIENT_KEY, REVIEWER_KEY = "bench-client-0123456789abcdef", "bench-reviewer-0123456789abcdef"
KEYS = {"SO8T_CLIENT_KEYS": f"bench:{CLIENT_KEY}", "SO8T_REVIEWER_KEYS": f"desk:{REVIEWER_KEY}"}
AUTH, REVIEW = {"Authorization": f"Bearer {CLIENT_KEY}"}, {"Authorization": f"Bearer {REVIEWER_KEY}"}
VARIANTS = {"one_at_a_time": {"max_batch": 1, "max_wait_ms": 0, "concurrent_batches": 1},
            "micro_batching": {"max_batch": 32, "max_wait_ms": 5, "concurrent_batches": 2}}


def build_model(folder: Path) -> Path:
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    path = folder / "tiny"
    SO8TModel.from_config(ModelConfig()).save(path)
    return path


def write_bench_config(folder: Path, checkpoint: Path, **service) -> Path:
    """The service config with no rate limit and no backlog limit (the load is the point)."""
    return write_config(folder, checkpoint, queue_timeout_s=10, **{"rate_limit_per_minute": 1e9,
                        "rate_limit_burst": 10**6, "max_pending": 100_000, **service})


def serve(config: Path, log_dir: Path, threads: int) -> Server:
    """``so8t serve`` as a child process, like a deployment, with the benchmark's keys and ``threads``."""
    return Server(config, log_dir, keys=KEYS, threads=threads, stop_timeout_s=300)


def decision_ids(log_dir: Path) -> list[str]:
    return [r["request_id"] for r in read_records(log_dir) if r.get("event") == "decision"]


def percentiles(response_times: dict) -> dict:
    """p50/p95/p99 in ms from locust's histogram of response times (rounded to 2 significant digits)."""
    values = np.repeat([float(k) for k in response_times], [int(v) for v in response_times.values()])
    return {f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)} if len(values) else {}


def throughput(label: str, settings: dict, work: Path, checkpoint: Path, requests: Path, args) -> dict:
    """One locust run against a fresh server with these service settings."""
    folder = work / label
    folder.mkdir()
    server = serve(write_bench_config(folder, checkpoint, **settings), folder / "logs", args.torch_threads)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as http:
            for i in range(10):  # warm-up: the first passes of a model are slow
                http.post("/v1/decide", json={"user_request": f"warm-up request {i}"})
        stats_file = folder / "locust"
        env = {**os.environ, "SO8T_BENCH_REQUESTS": str(requests), "SO8T_BENCH_KEY": CLIENT_KEY}
        subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "service_locustfile.py"),
                        "--headless", "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s",
                        "--host", server.url, "--json-file", str(stats_file), "--only-summary", "--stop-timeout", "60"],
                       env=env, check=True, capture_output=True, timeout=args.seconds + 600)
        batches = server.metric("so8t_batch_size_count")
        batched = server.metric("so8t_batch_size_sum")
    finally:
        code = server.stop()
    stats = next(s for s in json.loads((stats_file.with_suffix(".json")).read_text()) if s["name"] == "/v1/decide")
    elapsed = stats["last_request_timestamp"] - stats["start_time"]
    logged = len(decision_ids(folder / "logs")) - 10
    return {"settings": settings, "requests": stats["num_requests"],
            "failures": stats["num_failures"], "seconds": round(elapsed, 1),
            "requests_per_s": round(stats["num_requests"] / elapsed, 2), "latency_ms": percentiles(stats["response_times"]),
            "mean_batch_size": round(batched / batches, 2), "audit_records": logged,
            "verify_errors": verify(folder / "logs")["errors"], "exit_code": code}


def exact_counts(work: Path, checkpoint: Path, args) -> dict:
    folder = work / "exact"
    folder.mkdir()
    config = write_bench_config(folder, checkpoint, **VARIANTS["micro_batching"])
    server = serve(config, folder / "logs", args.torch_threads)

    async def client(http: httpx.AsyncClient, k: int) -> list[str]:
        ids = []
        for m in range(args.per_client):
            answer = await http.post("/v1/decide", json={"user_request": f"client {k}, request {m}: expense rules?"})
            answer.raise_for_status()
            ids.append(answer.json()["request_id"])
        return ids

    async def burst() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=300) as http:
            return [i for ids in await asyncio.gather(*(client(http, k) for k in range(args.clients))) for i in ids]

    try:
        start = time.perf_counter()
        answered = asyncio.run(burst())
        seconds = time.perf_counter() - start
    finally:
        server.stop()
    logged = decision_ids(folder / "logs")
    return {"clients": args.clients, "per_client": args.per_client, "answered": len(answered),
            "audit_records": len(logged), "same_ids": sorted(logged) == sorted(answered),
            "seconds": round(seconds, 1), "verify_errors": verify(folder / "logs")["errors"]}


def kill_9(work: Path, checkpoint: Path, args) -> dict:
    folder = work / "kill9"
    folder.mkdir()
    config = write_bench_config(folder, checkpoint, **VARIANTS["micro_batching"])
    server = serve(config, folder / "logs", args.torch_threads)
    answered: list[dict] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as http:
            for n in range(10**6):
                if stop.is_set():
                    return
                try:
                    answer = http.post("/v1/decide", json={"user_request": f"client {k} asks {n}: my VPN fails"})
                except httpx.HTTPError:
                    return
                answered.append(answer.json())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    while len(answered) < args.kill_after:
        time.sleep(0.005)
    server.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    restarted = serve(config, folder / "logs", args.torch_threads)
    try:
        deadline = time.monotonic() + 120
        while restarted.metric("so8t_escalations_spooled") > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        cases = httpx.get(f"{restarted.url}/v1/escalations", params={"limit": 1000}, headers=REVIEW, timeout=60).json()
    finally:
        restarted.stop()
    logged = decision_ids(folder / "logs")
    ids = {a["request_id"] for a in answered}
    escalations = {a["escalation_id"] for a in answered if a.get("escalation_id")}
    queued = {c["case_id"] for c in cases["cases"]}
    report = verify(folder / "logs")
    return {"answered_before_kill": len(answered), "audit_records_after_restart": len(logged),
            "answered_missing_from_log": len(ids - set(logged)), "recorded_twice": len(logged) - len(set(logged)),
            "decided_but_unanswered": len(set(logged) - ids), "answered_escalations": len(escalations),
            "answered_escalations_missing_from_queue": len(escalations - queued),
            "verify_errors": report["errors"], "verify_notes": report["notes"]}


def fault_of(text: str) -> str | None:
    return {0: "raise", 1: "nan", 2: "shape", 3: "hang"}.get(hashlib.sha256(text.encode()).digest()[0] % 16)


class FaultInjector:
    """The real model's pass, then: a faulted text breaks it; every other row becomes p(ALLOW)=0.97."""

    def __init__(self, decider, hang_s: float) -> None:
        self.decider, self.hang_s = decider, hang_s
        self.model_version = f"{decider.model_version}+faults"

    def decide(self, requests, contexts=None, **kwargs):
        probs = np.asarray(self.decider.decide(requests, contexts).detach().cpu().numpy())
        faults = {fault_of(r) for r in requests}
        if "hang" in faults:
            time.sleep(self.hang_s)
        if "raise" in faults:
            raise RuntimeError("injected fault")
        if "shape" in faults:
            return probs[:, :2]
        out = np.tile([0.97, 0.02, 0.01], (len(requests), 1))
        out[[i for i, r in enumerate(requests) if fault_of(r) == "nan"]] = np.nan
        return out

    def generate(self, *args, **kwargs):
        return ""


def faults(work: Path, checkpoint: Path, args) -> dict:
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)  # put back at the end: main() may run inside a test process
    try:
        return _faults(work, checkpoint, args)
    finally:
        torch.set_num_threads(threads_before)


def _faults(work: Path, checkpoint: Path, args) -> dict:
    from so8t_lib.serve.backends import load_decider
    from so8t_lib.serve.config import RuntimeConfig
    from so8t_lib.serve.http import ApiKeys, Service
    from so8t_lib.serve.http.server import listening_socket, uvicorn_server
    from so8t_lib.serve.runtime import Agent

    folder = work / "faults" / "logs"
    config = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": str(checkpoint)}, "inference": {"generate_responses": False, "decision_timeout_s": 2},
        "logging": {"audit_log": str(folder / "audit.jsonl")},
        "escalation": {"queue_db": str(folder / "escalations.sqlite"), "enable_notifications": False,
                       "queue_timeout_s": 1},
        "service": {"rate_limit_per_minute": 1e9, "rate_limit_burst": 10**6, **VARIANTS["micro_batching"]}})
    agent = Agent(config, decider=FaultInjector(load_decider(str(checkpoint)), hang_s=3), test_mode=True)
    service = Service(agent, ApiKeys.from_env("SO8T_CLIENT_KEYS", "SO8T_REVIEWER_KEYS", KEYS))
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn_server(service)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    texts = [f"fault probe {i}: where do I find the holiday calendar?" for i in range(args.fault_requests)]
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def ask(http: httpx.AsyncClient, chunk: list[str]) -> list[tuple[str, dict]]:
        return [(t, (await http.post("/v1/decide", json={"user_request": t})).json()) for t in chunk]

    async def run() -> list[tuple[str, dict]]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120) as http:
            parts = await asyncio.gather(*(ask(http, texts[k::8]) for k in range(8)))
        return [pair for part in parts for pair in part]

    try:
        pairs = asyncio.run(run())
    finally:
        server.should_exit = True
        thread.join(60)
    faulted = [r for t, r in pairs if fault_of(t)]
    healthy = [r for t, r in pairs if not fault_of(t)]
    return {"requests": len(pairs), "faulted": len(faulted),
            "faults_by_kind": {k: sum(1 for t, _ in pairs if fault_of(t) == k) for k in ("raise", "nan", "shape", "hang")},
            "allow_on_faulted": sum(r["decision"] == "ALLOW" for r in faulted),
            "healthy_allowed": sum(r["decision"] == "ALLOW" for r in healthy),
            "healthy_escalated_with_a_faulted_batch": sum(r["decision"] != "ALLOW" for r in healthy),
            "audit_records": len(decision_ids(folder)), "verify_errors": verify(folder)["errors"]}


def summarize(runs: list[dict]) -> dict:
    """Per variant, the median over its repeats (the runs alternate, so slow phases of a shared machine
    hit both variants), and the ratio of each to one request at a time."""
    out = {}
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        out[name] = {"requests_per_s": round(float(np.median([r["requests_per_s"] for r in mine])), 2),
                     "latency_ms": {p: round(float(np.median([r["latency_ms"][p] for r in mine])), 1)
                                    for p in ("p50", "p95", "p99")},
                     "mean_batch_size": round(float(np.median([r["mean_batch_size"] for r in mine])), 2),
                     "failures": sum(r["failures"] for r in mine), "repeats": len(mine)}
    base = out["one_at_a_time"]["requests_per_s"]
    for row in out.values():
        row["requests_per_s_ratio"] = round(row["requests_per_s"] / base, 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=32, help="locust users (closed loop)")
    parser.add_argument("--seconds", type=int, default=30, help="locust run time per variant and repeat")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant, alternating")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=25)
    parser.add_argument("--kill-after", type=int, default=150, help="answers before the kill -9")
    parser.add_argument("--fault-requests", type=int, default=200)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service_load_cpu.json"))
    args = parser.parse_args(argv)
    requests = [json.loads(line) for line in (ROOT / "data" / "so8t_safety" / "test.jsonl").open(encoding="utf-8")]
    with tempfile.TemporaryDirectory(prefix="so8t-load-") as tmp:
        work = Path(tmp)
        checkpoint = build_model(work)
        request_file = work / "requests.jsonl"
        request_file.write_text("".join(json.dumps({"user_request": r["user_request"], "context": r.get("context")},
                                                   ensure_ascii=False) + "\n" for r in requests), encoding="utf-8")
        runs = [{**throughput(f"{name}-{repeat}", settings, work, checkpoint, request_file, args), "variant": name,
                 "repeat": repeat} for repeat in range(args.repeats) for name, settings in VARIANTS.items()]
        results = {"throughput": summarize(runs), "throughput_runs": runs,
                   "exact_counts": exact_counts(work, checkpoint, args),
                   "kill_9": kill_9(work, checkpoint, args), "faults": faults(work, checkpoint, args)}
    payload = {"benchmark": "service_load", "command": "python benchmarks/service_load.py " + " ".join(argv or sys.argv[1:]),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                           "load_average_after": [round(x, 2) for x in os.getloadavg()]},
               "settings": {k: v for k, v in vars(args).items() if k != "out"}, "results": results}
    atomic_write_text(args.out, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return payload


if __name__ == "__main__":
    print(json.dumps(main()["results"], indent=2))
