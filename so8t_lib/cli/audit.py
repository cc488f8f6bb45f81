"""so8t audit: check and read the hash-chained audit log.

    so8t audit verify logs/        # exit 1 and name the record if anything was edited, dropped or reordered
    so8t audit show logs/          # the records; decrypted with $SO8T_AUDIT_KEY if encrypted
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..serve.audit import read_records, verify


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", help="check the hash chain of every audit file in a folder")
    p_verify.add_argument("folder")
    p_verify.add_argument("--name", default="audit.jsonl")
    p_show = sub.add_parser("show", help="print every record (decrypted with $SO8T_AUDIT_KEY when encrypted)")
    p_show.add_argument("folder")
    p_show.add_argument("--name", default="audit.jsonl")
    p_show.add_argument("--key-env", default="SO8T_AUDIT_KEY")
    args = parser.parse_args(argv)
    if args.command == "show":
        try:
            for record in read_records(args.folder, args.name, os.environ.get(args.key_env)):
                print(json.dumps(record, ensure_ascii=False))
        except ValueError as exc:
            sys.exit(f"error: {exc}")
        return
    report = verify(args.folder, args.name)
    if not report["files"]:
        sys.exit(f"error: no {args.name} files in {args.folder}")
    for error in report["errors"]:
        print(f"FAIL {error}")
    status = "OK" if not report["errors"] else f"{len(report['errors'])} problem(s)"
    print(f"{status}: {report['records']} records (seq {report['first_seq']}..{report['last_seq']}) "
          f"in {len(report['files'])} file(s)")
    if report["errors"]:
        sys.exit(1)
