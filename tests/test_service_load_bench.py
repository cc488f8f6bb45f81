"""benchmarks/service_load.py runs end to end at a tiny size and its JSON says what the issue asks for:
throughput of both variants, exact audit counts, nothing lost to kill -9, no ALLOW on injected faults."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_service_load_benchmark_runs_and_reports(tmp_path):
    spec = importlib.util.spec_from_file_location("service_load", ROOT / "benchmarks" / "service_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "load.json"
    module.main(["--users", "4", "--seconds", "3", "--repeats", "1", "--clients", "3", "--per-client", "4",
                 "--kill-after", "12", "--fault-requests", "24", "--out", str(out)])
    results = json.loads(out.read_text())["results"]
    assert set(results["throughput"]) == {"one_at_a_time", "micro_batching"}
    assert all(run["failures"] == 0 and run["verify_errors"] == [] and run["audit_records"] >= run["requests"]
               for run in results["throughput_runs"])
    exact = results["exact_counts"]
    assert exact["answered"] == exact["audit_records"] == 12 and exact["same_ids"] and exact["verify_errors"] == []
    killed = results["kill_9"]
    assert killed["answered_before_kill"] >= 12 and killed["answered_missing_from_log"] == 0
    assert killed["recorded_twice"] == 0 and killed["answered_escalations_missing_from_queue"] == 0
    assert killed["verify_errors"] == []
    faults = results["faults"]
    assert faults["faulted"] > 0 and faults["allow_on_faulted"] == 0 and faults["audit_records"] == 24
