"""Locust users for benchmarks/service_load.py: each one posts requests of the corpus test split to
/v1/decide as fast as it gets answers (closed loop, no think time).

    SO8T_BENCH_REQUESTS=requests.jsonl SO8T_BENCH_KEY=secret \\
        locust -f benchmarks/service_locustfile.py --headless -u 32 -r 32 -t 30s --host http://127.0.0.1:8080

An answer counts as a failure unless it is HTTP 200 with a decision.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant, task

with open(os.environ["SO8T_BENCH_REQUESTS"], encoding="utf-8") as handle:
    REQUESTS = [json.loads(line) for line in handle if line.strip()]
HEADERS = {"Authorization": f"Bearer {os.environ['SO8T_BENCH_KEY']}"}


class GateClient(FastHttpUser):
    wait_time = constant(0)

    @task
    def decide(self) -> None:
        item = random.choice(REQUESTS)
        body = {"user_request": item["user_request"], "context": item.get("context"), "user_id": "bench-user"}
        with self.client.post("/v1/decide", json=body, headers=HEADERS, name="/v1/decide",
                              catch_response=True) as answer:
            if answer.status_code != 200:
                answer.failure(f"HTTP {answer.status_code}")
            elif answer.json().get("decision") not in ("ALLOW", "REFUSE", "ESCALATE"):
                answer.failure("no decision")
