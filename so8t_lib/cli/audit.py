"""so8t audit: check and read the hash-chained audit log.

    so8t audit verify logs/ [--hmac-key-env SO8T_AUDIT_HMAC_KEY] [--expect SEQ:HASH]
    so8t audit show logs/          # the records; decrypted with $SO8T_AUDIT_KEY if encrypted
    so8t audit accept-anchor logs/ --by NAME

``verify`` exits 1 and names every problem it finds (docs/runtime.md lists exactly what it can and
cannot detect), prints notes (set-aside torn writes, rotated-away records), and ends with the
anchor's (seq, hash): store that line outside the log folder and pass it back with --expect to
detect a rollback. ``accept-anchor`` records that a person reviewed a log whose anchor the writer
had to re-create.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..serve.audit import read_records, verify
from ..serve.audit_verify import accept_anchor


def _expect(text: str) -> tuple[int, str]:
    try:
        seq, digest = text.split(":", 1)
        return int(seq), digest.strip()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--expect takes SEQ:HASH, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", help="check the chain, its anchor and the files of a log folder")
    p_verify.add_argument("folder")
    p_verify.add_argument("--name", default="audit.jsonl")
    p_verify.add_argument("--hmac-key-env", default="SO8T_AUDIT_HMAC_KEY",
                          help="environment variable with the key that signs the anchor (checked when set)")
    p_verify.add_argument("--expect", type=_expect, help="SEQ:HASH kept outside the folder: detects a rollback")
    p_show = sub.add_parser("show", help="print every record (decrypted with $SO8T_AUDIT_KEY when encrypted)")
    p_show.add_argument("folder")
    p_show.add_argument("--name", default="audit.jsonl")
    p_show.add_argument("--key-env", default="SO8T_AUDIT_KEY")
    p_accept = sub.add_parser("accept-anchor", help="record that a re-created anchor was reviewed")
    p_accept.add_argument("folder")
    p_accept.add_argument("--name", default="audit.jsonl")
    p_accept.add_argument("--by", required=True)
    p_accept.add_argument("--hmac-key-env", default="SO8T_AUDIT_HMAC_KEY")
    args = parser.parse_args(argv)
    if args.command == "show":
        try:
            for record in read_records(args.folder, args.name, os.environ.get(args.key_env)):
                print(json.dumps(record, ensure_ascii=False))
        except ValueError as exc:
            sys.exit(f"error: {exc}")
        return 0
    if args.command == "accept-anchor":
        try:
            anchor = accept_anchor(args.folder, args.by, args.name, os.environ.get(args.hmac_key_env))
        except (ValueError, OSError) as exc:
            sys.exit(f"error: {exc}")
        print(f"anchor accepted by {anchor['accepted_by']} at {anchor['accepted_at']}")
        return 0
    report = verify(args.folder, args.name, os.environ.get(args.hmac_key_env), args.expect)
    if not report["files"] and not report["errors"]:
        sys.exit(f"error: no {args.name} files in {args.folder}")
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
    if report["errors"]:
        sys.exit(1)
    return 0
