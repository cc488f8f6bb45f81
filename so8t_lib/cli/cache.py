"""so8t cache: what $SO8T_CACHE (else ~/.cache/so8t) holds, and freeing the space nothing will read again.

    so8t cache                              # every entry: kind, status, size, days since last use
    so8t cache prune --dry-run              # what prune would remove, and how much it frees
    so8t cache prune                        # stale-format and damaged frozen-state caches, interrupted writes
    so8t cache prune --unused-days 14       # also frozen-state caches no run has read for 14 days
    so8t cache prune --all-states           # every frozen-state cache (the next run rebuilds its own: minutes)

Converted bases and tokenizers are never pruned unless an interrupted write left them half-made or damaged; a
stale, damaged or half-made folder written to in the last hour is taken for a build in progress and left alone.
A folder the workbench does not name so (SO8T_CACHE pointed at a project folder) is listed as unknown and never
removed. A job that has a frozen-state cache open keeps working if --all-states or --unused-days removes it; the
next run rebuilds it.
"""

from __future__ import annotations

import argparse
import sys

from ..core.paths import cache_root
from ..workbench.cache_inventory import UNKNOWN, CacheEntry, human_bytes, inventory, removable, remove
from .arg_types import number_in


def _table(entries: list[CacheEntry]) -> str:
    if not entries:
        return "  (empty)"
    rows = [f"  {e.kind:<14} {e.status:<12} {'-' if e.status == UNKNOWN else human_bytes(e.bytes):>9}  "
            f"{e.idle_days:6.1f} d  {e.path.name}\n"
            f"  {'':<14} {e.detail}" for e in entries]
    header = f"  {'kind':<14} {'status':<12} {'size':>9}  {'unused':>8}  folder"
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t cache", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("action", nargs="?", choices=("list", "prune"), default="list",
                        help="list the entries (the default) or prune them")
    parser.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")
    parser.add_argument("--unused-days", type=number_in(0, what="a number of days"), default=None,
                        help="prune: also frozen-state caches not read for this many days")
    parser.add_argument("--all-states", action="store_true", help="prune: every frozen-state cache")
    args = parser.parse_args(argv)
    if args.action == "list" and (args.dry_run or args.unused_days is not None or args.all_states):
        parser.error("--dry-run, --unused-days and --all-states go with 'so8t cache prune'")
    try:
        root = cache_root()
    except NotADirectoryError as exc:  # listed as "(empty)" before: every later run would fail to write there
        parser.error(str(exc))
    entries = inventory(root)
    unknown = [e for e in entries if e.status == UNKNOWN]
    if unknown:
        print(f"warning: {len(unknown)} of the {len(entries)} folders under {root} were not written by the workbench "
              "(kept, never pruned): check that SO8T_CACHE points at the workbench's cache", file=sys.stderr)
    if args.action == "list":
        print(f"{root}: {len(entries)} entries, {human_bytes(sum(e.bytes for e in entries))}")
        print(_table(entries))
        stale = removable(entries)
        if stale:
            print(f"so8t cache prune would free {human_bytes(sum(e.bytes for e in stale))} "
                  f"({len(stale)} entries nothing will read again)")
        return 0
    chosen = removable(entries, all_states=args.all_states, unused_days=args.unused_days)
    freed = sum(e.bytes for e in chosen)
    verb = "would remove" if args.dry_run else "removing"
    print(f"{root}: {verb} {len(chosen)} of {len(entries)} entries, {human_bytes(freed)}")
    if chosen or unknown:
        print(_table(chosen + unknown))
    failed = 0
    if not args.dry_run:
        for entry in chosen:
            try:
                remove(entry)
            except OSError as exc:
                failed += 1
                print(f"could not remove it: {exc}; check the permissions and run prune again")
    return 1 if failed else 0
