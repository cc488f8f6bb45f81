"""so8t audit: check and read the hash-chained audit log.

    so8t audit verify logs/ [more/ ...] [--hmac-key-env SO8T_AUDIT_HMAC_KEY] [--expect SEQ:HASH]
    so8t audit verify /var/log/so8t --heads /var/lib/so8t/audit-heads.json   # every chain, run after run
    so8t audit show logs/          # the records; decrypted with $SO8T_AUDIT_KEY if encrypted
    so8t audit accept-anchor logs/ --by NAME

``verify`` exits 1 and names every problem it finds (docs/runtime.md lists exactly what it can and
cannot detect), prints notes (set-aside torn writes, rotated-away records), and ends with the
anchor's (seq, hash): store that line outside the log folder and pass it back with --expect to
detect a rollback (a checkpoint whose record was rotated away cannot be compared: that fails, saying so). ``--heads FILE`` does that for every chain: it checks each against the head an earlier
run recorded there (and that no recorded chain is gone), and records the new heads when all pass. A folder shared by several server processes holds one chain per replica
(``audit-<replica>.jsonl``, from $SO8T_REPLICA): ``verify`` checks each of them, and of several
folders, unless --name picks one. ``accept-anchor`` records that a person reviewed a log whose anchor the writer
had to re-create.

``show`` and ``verify`` wait at most --lock-timeout seconds (30) for the log's lock, which writers hold for
milliseconds; past that they exit 2 and say how to find the process holding it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..serve.audit import read_records, verify
from ..serve.audit_files import AuditLockTimeout, chain_names, log_files
from ..serve.audit_heads import (
    HeadsError,
    chain_key,
    gone_chains,
    heads_of,
    read_heads,
    write_heads,
)
from ..serve.audit_textfile import write_verify_metrics
from ..serve.audit_verify import READ_LOCK_TIMEOUT_S, accept_anchor, verify_chains
from ..serve.config import AUDIT_HMAC_KEY_ENV, AUDIT_KEY_ENV
from .arg_types import number_in


def _expect(text: str) -> tuple[int, str]:
    """SEQ:HASH, SEQ a record's sequence number (0 or more: a negative one names no record, so the check it asks
    for could never be made)."""
    try:
        seq, digest = text.split(":", 1)
        seq = int(seq)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--expect takes SEQ:HASH, got {text!r}") from None
    if seq < 0:
        raise argparse.ArgumentTypeError(f"--expect {text!r}: SEQ is a record's sequence number, 0 or more; copy "
                                         "the anchor line of a passing run")
    return seq, digest.strip()


def _check_show_target(folder: Path, name: str) -> None:
    """Exit naming the mistake when there is nothing to show: a wrong folder printed nothing and exited 0, which
    reads as "no records"."""
    if folder.is_file():
        sys.exit(f"error: {folder} is a file; pass its folder: so8t audit show {folder.parent} --name {folder.name}")
    if not folder.is_dir():
        sys.exit(f"error: no folder {folder}; pass the folder that holds the audit log (logging.audit_log's)")
    if not log_files(folder, name):
        others = [n for n in chain_names(folder, name) if n != name]
        sys.exit(f"error: no audit log {name} in {folder}"
                 + (f"; it holds {', '.join(others)}: pick one with --name" if others else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", help="check the chain, its anchor and the files of a log folder")
    p_verify.add_argument("folder", nargs="+", help="log folder(s); every replica's chain in each is checked")
    p_verify.add_argument("--name", help="check only this chain (default: audit.jsonl and every audit-<replica>.jsonl)")
    p_verify.add_argument("--hmac-key-env", default=AUDIT_HMAC_KEY_ENV,
                          help="environment variable with the key that signs the anchor (checked when set)")
    checkpoint = p_verify.add_mutually_exclusive_group()
    checkpoint.add_argument("--expect", type=_expect, help="SEQ:HASH kept outside the folder: detects a rollback")
    checkpoint.add_argument("--heads", type=Path, help="file outside the log folders with each chain's head from the "
                            "last passing run: checked, then updated when every chain passes")
    p_verify.add_argument("--metrics-file", type=Path, help="also write the outcome as Prometheus gauges (a .prom file "
                          "for node_exporter's textfile collector), whether the run passes or not")
    _lock_timeout_option(p_verify)
    p_show = sub.add_parser("show", help="print every record (decrypted with $SO8T_AUDIT_KEY when encrypted)")
    p_show.add_argument("folder")
    p_show.add_argument("--name", default="audit.jsonl")
    p_show.add_argument("--key-env", default=AUDIT_KEY_ENV)
    _lock_timeout_option(p_show)
    p_accept = sub.add_parser("accept-anchor", help="record that a re-created anchor was reviewed")
    p_accept.add_argument("folder")
    p_accept.add_argument("--name", default="audit.jsonl")
    p_accept.add_argument("--by", required=True)
    p_accept.add_argument("--hmac-key-env", default=AUDIT_HMAC_KEY_ENV)
    args = parser.parse_args(argv)
    if args.command == "show":
        _check_show_target(Path(args.folder), args.name)
        skipped: list[str] = []
        try:
            for record in read_records(args.folder, args.name, os.environ.get(args.key_env),
                                       lock_timeout=args.lock_timeout, skipped=skipped, named=True):
                print(json.dumps(record, ensure_ascii=False))
        except AuditLockTimeout as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ValueError as exc:
            sys.exit(f"error: {exc}")
        if skipped:  # printed nothing for them: without this, damage reads as fewer records
            sys.exit(f"error: {len(skipped)} line(s) are not audit records ({', '.join(skipped[:3])}"
                     f"{', ...' if len(skipped) > 3 else ''}); run: so8t audit verify {args.folder}")
        return 0
    if args.command == "accept-anchor":
        try:
            anchor = accept_anchor(args.folder, args.by, args.name, os.environ.get(args.hmac_key_env))
        except (ValueError, OSError) as exc:
            sys.exit(f"error: {exc}")
        print(f"anchor accepted by {anchor['accepted_by']} at {anchor['accepted_at']}")
        return 0
    if args.heads and args.name:
        parser.error("--heads checks every chain of the folders (and that none is gone): leave out --name")
    return _verify_main(args)


def _lock_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lock-timeout", type=number_in(0, what="a number of seconds"), default=READ_LOCK_TIMEOUT_S,
                        help=f"seconds to wait for the log's lock before giving up with exit 2 (default "
                             f"{READ_LOCK_TIMEOUT_S:g}); writers hold it for milliseconds")


class _CannotVerify(Exception):
    """A run that cannot check what it was asked to (the message says why)."""


def _verify_main(args: argparse.Namespace) -> int:
    """Verify, print, record the heads (--heads, when all pass) and the gauges (--metrics-file, always)."""
    earlier: dict = {}
    try:
        if args.heads:
            earlier = read_heads(args.heads)
            reports = _verify_against_heads(args, earlier)
        else:
            reports = _verify_plain(args)
    except (_CannotVerify, HeadsError) as exc:
        _record_outcome(args, None)
        sys.exit(f"error: {exc}")
    except AuditLockTimeout as exc:  # nothing was checked: not a chain that failed (exit 1)
        _record_outcome(args, None)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = _print_reports(reports)
    if args.heads and not failed:
        try:
            write_heads(args.heads, earlier, heads_of(reports), args.folder)
        except OSError as exc:
            _record_outcome(args, None)
            sys.exit(f"error: the chains passed, but {args.heads} cannot be written ({exc}); it keeps the last "
                     "passing run's heads")
        print(f"heads of {len(reports)} chain(s) recorded in {args.heads}"
              + ("" if earlier else " (the first run: nothing earlier to compare with)"))
    _record_outcome(args, reports)
    if failed:
        sys.exit(f"heads not updated: {args.heads} keeps the last passing run's" if args.heads else 1)
    return 0


def _record_outcome(args: argparse.Namespace, reports: dict[str, dict] | None) -> None:
    """--metrics-file: the gauges of this run; a file that cannot be written ends the run with that error."""
    if not args.metrics_file:
        return
    try:
        write_verify_metrics(args.metrics_file, reports)
    except (OSError, RuntimeError) as exc:
        sys.exit(f"error: the outcome could not be written to {args.metrics_file} ({exc}); the alert on it goes "
                 "stale instead")


def _verify_plain(args: argparse.Namespace) -> dict[str, dict]:
    key = os.environ.get(args.hmac_key_env)
    if args.name:
        reports = {str(Path(f) / args.name): verify(f, args.name, key, args.expect, lock_timeout=args.lock_timeout)
                   for f in args.folder}
        missing = [chain for chain, report in reports.items() if not report["files"] and not report["errors"]]
        if missing:
            raise _CannotVerify(f"no {args.name} files in {Path(missing[0]).parent}")
        return reports
    reports = verify_chains(args.folder, hmac_key=key, lock_timeout=args.lock_timeout)
    if args.expect and len(reports) > 1:
        raise _CannotVerify(f"--expect names one chain's head, but there are {len(reports)} chains "
                            f"({', '.join(reports)}): pick one with --name")
    if args.expect:
        only = next(iter(reports))
        reports[only] = verify(Path(only).parent, Path(only).name, key, args.expect, lock_timeout=args.lock_timeout)
    return reports


def _verify_against_heads(args: argparse.Namespace, earlier: dict[str, tuple[int, str]]) -> dict[str, dict]:
    """Every chain of the folders against the head the last passing run recorded, and no recorded chain gone."""
    reports = verify_chains(args.folder, hmac_key=os.environ.get(args.hmac_key_env),
                            expect_for=lambda chain: earlier.get(chain_key(chain)), lock_timeout=args.lock_timeout)
    present = [chain for chain, report in reports.items() if report["files"] or report["anchor"] is not None]
    return reports | gone_chains(earlier, args.folder, present)


def _print_reports(reports: dict[str, dict]) -> int:
    """Print each chain's report; how many failed."""
    failed = 0
    for chain, report in reports.items():
        if len(reports) > 1:
            print(f"== {chain}")
        failed += bool(report["errors"])
        _print_report(report)
    if len(reports) > 1:
        print(f"{len(reports) - failed} of {len(reports)} chains OK")
    return failed


def _print_report(report: dict) -> None:
    for note in report["notes"]:
        print(f"NOTE {note}")
    for error in report["errors"]:
        print(f"FAIL {error}")
    status = "OK" if not report["errors"] else f"{len(report['errors'])} problem(s)"
    print(f"{status}: {report['records']} records (seq {report['first_seq']}..{report['last_seq']}) "
          f"in {len(report['files'])} file(s)")
    anchor = report["anchor"]
    if anchor and anchor.get("last_seq") is not None:
        print(f"anchor: {anchor['last_seq']}:{anchor['last_hash']}")
