"""so8t escalation: the queue of cases for people.

    so8t escalation list [--db logs/escalations.sqlite] [--status open]
    so8t escalation resolve CASE_ID --decision ALLOW|REFUSE --by NAME [--note TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..core.schema import HUMAN_DECISIONS
from ..serve.escalation import EscalationQueue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t escalation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=os.environ.get("SO8T_ESCALATION_DB", "logs/escalations.sqlite"))
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show cases")
    p_list.add_argument("--status", choices=["open", "notified", "notify_failed", "resolved"])
    p_resolve = sub.add_parser("resolve", help="record a person's decision on a case")
    p_resolve.add_argument("case_id")
    p_resolve.add_argument("--decision", required=True, choices=HUMAN_DECISIONS)
    p_resolve.add_argument("--by", required=True)
    p_resolve.add_argument("--note")
    args = parser.parse_args(argv)
    queue = EscalationQueue(args.db)
    if args.command == "list":
        for case in queue.list(args.status):
            print(json.dumps({k: case[k] for k in ("case_id", "created_at", "category", "status", "human_decision",
                                                    "input")}, ensure_ascii=False))
        return
    try:
        case = queue.resolve(args.case_id, args.decision, args.by, args.note)
    except (KeyError, ValueError) as exc:
        sys.exit(f"error: {exc.args[0]}")
    print(f"{case['case_id']}: resolved as {case['human_decision']} by {case['resolved_by']} at {case['resolved_at']}")
