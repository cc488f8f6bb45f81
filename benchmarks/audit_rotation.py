"""How long a rotation holds the audit log's lock, by gzip level: every decision waits for it.

    python benchmarks/audit_rotation.py [--megabytes 64] [--levels 1,6,9] [--plain] [--out benchmarks/results/audit_rotation.json]

A rotation gzips the live file under the log's exclusive lock (``AuditLog.rotate``, as an append does when the
file reaches ``max_log_size``), so no decision can be recorded meanwhile. The script writes one live file of
decision records (the shape the runtime writes, chained, ``--megabytes`` of them), then rotates a fresh copy of it
at each gzip level, alternating the levels over ``--repeats`` rounds, and reports the median time the lock was
held, the compressed size, and both as ratios to level 9 (gzip.open's default, what rotation used before). The
production config rotates at 1 GB: multiply.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.serve import audit_files  # noqa: E402
from so8t_lib.serve.audit import AuditLog  # noqa: E402
from so8t_lib.serve.audit_files import GENESIS, encode_line, record_hash, write_anchor  # noqa: E402
from so8t_lib.serve.audit_verify import make_fernet  # noqa: E402


def write_log(path: Path, megabytes: int, encrypted: bool) -> int:
    """A chained live file of about ``megabytes`` MB and its anchor, each record encrypted as the runtime does with
    an encryption key (production.yaml sets one); returns the number of records."""
    fernet = make_fernet(Fernet.generate_key()) if encrypted else None
    prev, seq, size = GENESIS, 0, 0
    with open(path, "wb") as out:
        while size < megabytes * 2**20:
            record = {"event": "decision", "timestamp": "2026-12-05T00:00:00.000000Z", "request_id": f"req_{seq:09d}",
                      "user_id": "u-3f9a2c", "input": f"経費精算の締め日はいつですか？ request {seq} " * 4,
                      "decision": ("ALLOW", "REFUSE", "ESCALATE")[seq % 3], "rationale": "passed to finance",
                      "human_required": seq % 3 == 2, "model_version": "so8t-demo@0123456789ab",
                      "processing_time_ms": 27.5, "confidence_score": 0.91, "category": "finance",
                      "probabilities": {"ALLOW": 0.91, "REFUSE": 0.04, "ESCALATE": 0.05}, "flags": [], "error": None,
                      "test": False, "seq": seq, "prev_hash": prev}
            if fernet is not None:
                token = fernet.encrypt(json.dumps(record, ensure_ascii=False).encode("utf-8")).decode("ascii")
                record = {"seq": seq, "prev_hash": prev, "enc": token}
            record["hash"] = prev = record_hash(record)
            line = encode_line(record)
            out.write(line)
            size, seq = size + len(line), seq + 1
    write_anchor(path, {"first_seq": 0, "first_prev_hash": GENESIS, "last_seq": seq - 1, "last_hash": prev})
    return seq


def rotate_once(source: Path, work: Path, level: int) -> tuple[float, int]:
    """(seconds the rotation held the lock, bytes of the .1.gz) for a fresh copy of the log folder ``source``."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for path in source.iterdir():
        shutil.copy2(path, work / path.name)
    log = AuditLog(work / "audit.jsonl", max_bytes=1 << 40, backup_count=3)
    audit_files.ROTATE_GZIP_LEVEL = level
    start = time.perf_counter()
    log.rotate()
    held = time.perf_counter() - start
    return held, (work / "audit.jsonl.1.gz").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--levels", default="1,6,9")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="records in clear (default: encrypted, as in production)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "audit_rotation.json"))
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    chosen = audit_files.ROTATE_GZIP_LEVEL
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        records = write_log(source / "audit.jsonl", args.megabytes, not args.plain)
        live_bytes = (source / "audit.jsonl").stat().st_size
        runs: dict[int, list[tuple[float, int]]] = {level: [] for level in levels}
        for _ in range(args.repeats):
            for level in levels:  # alternating, so a change in the machine's load falls on every level
                runs[level].append(rotate_once(source, Path(tmp) / "work", level))
    audit_files.ROTATE_GZIP_LEVEL = chosen
    base = 9 if 9 in levels else levels[-1]
    held = {level: float(np.median([h for h, _ in r])) for level, r in runs.items()}
    sizes = {level: int(np.median([b for _, b in r])) for level, r in runs.items()}
    result = {
        "benchmark": "audit_rotation", "command": "python benchmarks/audit_rotation.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "live_file": {"bytes": live_bytes, "records": records, "encrypted": not args.plain}, "repeats": args.repeats, "chosen_level": chosen,
        "levels": {str(level): {"lock_held_s": round(held[level], 3), "lock_held_ratio_to_9": round(held[level] / held[base], 3),
                                "gz_bytes": sizes[level], "gz_bytes_ratio_to_9": round(sizes[level] / sizes[base], 3),
                                "mb_per_s": round(live_bytes / 2**20 / held[level], 1),
                                "runs_s": [round(h, 3) for h, _ in runs[level]]} for level in levels}}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(json.dumps(result["levels"], indent=1))


if __name__ == "__main__":
    main()
