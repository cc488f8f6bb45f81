"""How long decisions wait while the audit log rotates: gzip under the lock (before) against gzip after it (now).

    python benchmarks/audit_rotation.py [--megabytes 64] [--levels 6] [--plain] [--out benchmarks/results/audit_rotation.json]

An append holds the log's exclusive lock, so whatever a rotation does under that lock every decision waits for.
The script writes one live file of decision records (the shape the runtime writes, chained, ``--megabytes`` of
them, encrypted as production.yaml stores them unless ``--plain``), then rotates a fresh copy of it two ways, in
alternation over ``--repeats`` rounds, while a second thread appends a decision record every 5 ms and times
each append:

- ``gzip_under_lock``: the rotation as it was before ``audit_rotation``: renamed and gzipped under the lock;
- ``gzip_after_lock``: ``AuditLog.rotate`` now: renamed under the lock, gzipped after it is released.

It reports, per gzip level, the longest and the median append wait during each, the rotation's whole time and the
compressed size, and the longest wait as a ratio to the old way's in the same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from cryptography.fernet import Fernet
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.serve import audit_files  # noqa: E402
from so8t_lib.serve.audit import AuditLog  # noqa: E402
from so8t_lib.serve.audit_files import (  # noqa: E402
    GENESIS,
    encode_line,
    file_lock,
    plain_rotated_path,
    read_anchor,
    record_hash,
    rotated_path,
    write_anchor,
)
from so8t_lib.serve.audit_rotation import shift_and_rename  # noqa: E402
from so8t_lib.serve.audit_verify import make_fernet, verify  # noqa: E402


def write_log(path: Path, megabytes: int, key: bytes | None) -> int:
    """A chained live file of about ``megabytes`` MB and its anchor, each record encrypted as the runtime does with
    an encryption key (production.yaml sets one); returns the number of records."""
    fernet = make_fernet(key) if key else None
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


def gzip_under_lock(log: AuditLog) -> None:
    """The old rotation: rename and gzip, all under the lock."""
    with file_lock(log.path):
        anchor = read_anchor(log.path)
        shift_and_rename(log.path, log.backup_count, anchor, None)
        plain = plain_rotated_path(log.path, 1)
        with plain.open("rb") as src, gzip.open(rotated_path(log.path, 1), "wb",
                                                compresslevel=audit_files.ROTATE_GZIP_LEVEL) as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        plain.unlink()


def rotate_once(source: Path, work: Path, level: int, way: str, key: bytes | None) -> dict:
    """One rotation of a fresh copy of the log folder ``source`` while a decision is appended every 5 ms."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for path in source.iterdir():
        shutil.copy2(path, work / path.name)
    log = AuditLog(work / "audit.jsonl", max_bytes=1 << 40, backup_count=3, mask_input=False, encryption_key=key)
    audit_files.ROTATE_GZIP_LEVEL = level
    waits: list[float] = []
    done = threading.Event()

    def append_every_5ms() -> None:
        n = 0
        while not done.is_set():
            start = time.perf_counter()
            log.append({"event": "decision", "request_id": f"probe_{n}", "decision": "REFUSE"})
            waits.append(time.perf_counter() - start)
            n += 1
            time.sleep(0.005)

    prober = threading.Thread(target=append_every_5ms)
    prober.start()
    time.sleep(0.05)  # the prober is appending before the rotation begins
    start = time.perf_counter()
    gzip_under_lock(log) if way == "gzip_under_lock" else log.rotate()
    rotation_s = time.perf_counter() - start
    time.sleep(0.05)
    done.set()
    prober.join()
    report = verify(work)
    if report["errors"]:
        raise SystemExit(f"the rotated log does not verify: {report['errors'][:3]}")
    return {"max_wait_s": max(waits), "median_wait_s": float(np.median(waits)), "appends": len(waits),
            "rotation_s": rotation_s, "gz_bytes": rotated_path(log.path, 1).stat().st_size}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--levels", default="6")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain", action="store_true", help="records in clear (default: encrypted, as in production)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "audit_rotation.json"))
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",")]
    chosen = audit_files.ROTATE_GZIP_LEVEL
    ways = ("gzip_under_lock", "gzip_after_lock")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        key = None if args.plain else Fernet.generate_key()
        records = write_log(source / "audit.jsonl", args.megabytes, key)
        live_bytes = (source / "audit.jsonl").stat().st_size
        runs: dict[tuple[int, str], list[dict]] = {(level, way): [] for level in levels for way in ways}
        for _ in tqdm(range(args.repeats), desc="rounds"):
            for level in levels:
                for way in ways:  # alternating, so a change in the machine's load falls on both ways
                    runs[level, way].append(rotate_once(source, Path(tmp) / "work", level, way, key))
    audit_files.ROTATE_GZIP_LEVEL = chosen

    def median(level: int, way: str, key: str) -> float:
        return float(np.median([run[key] for run in runs[level, way]]))

    result = {
        "benchmark": "audit_rotation", "command": "python benchmarks/audit_rotation.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "live_file": {"bytes": live_bytes, "records": records, "encrypted": not args.plain}, "repeats": args.repeats,
        "chosen_level": chosen, "probe": "one decision record appended every 5 ms during the rotation",
        "levels": {str(level): {way: {
            "max_wait_s": round(median(level, way, "max_wait_s"), 4),
            "max_wait_ratio_to_gzip_under_lock": round(median(level, way, "max_wait_s")
                                                       / median(level, "gzip_under_lock", "max_wait_s"), 4),
            "median_wait_s": round(median(level, way, "median_wait_s"), 5),
            "rotation_s": round(median(level, way, "rotation_s"), 3),
            "gz_bytes": int(median(level, way, "gz_bytes")),
            "runs_max_wait_s": [round(run["max_wait_s"], 4) for run in runs[level, way]]} for way in ways}
            for level in levels}}
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(json.dumps(result["levels"], indent=1))
    return result


if __name__ == "__main__":
    main()
