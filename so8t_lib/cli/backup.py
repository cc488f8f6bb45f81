"""so8t backup / so8t restore: the operation's state in one folder, and back, checked first.

    so8t backup --config configs/production.yaml [--out backup/20261130T090000Z] [--include-models]
    so8t backup --logs logs/ --db postgresql://so8t@db/so8t --configs configs/ --model dist/x-q4_k_m.gguf
    so8t restore backup/20261130T090000Z --into /srv/so8t [--queue-url postgresql://so8t@db2/so8t]
    so8t restore backup/20261130T090000Z --check          # every check, nothing written

``backup`` copies every replica's audit chain (under its lock, with its head), the escalation queue
(SQLite's online backup API, or a snapshot of the PostgreSQL tables) and its spool, the emergency flag
file, the configs, and each model's manifest with sha256 (its files too with --include-models). With
--config it takes what that service writes: the chain logging.audit_log names, the queue and spool
escalation.queue_db names (both in --logs when given, as `so8t serve --log-dir` puts them), and refuses
when the chain or the queue file is not there (--no-queue: a service without one). The folder appears
whole or not at all and never replaces another. It exits 1 when a chain did not verify (the copy is
kept as evidence, but restore will refuse it).

``restore`` checks every file's sha256, that nothing was added, that every chain verifies and ends at
its recorded head, the queue's integrity and counts, and the included models, and writes nothing when
any check fails. The chains are checked with the key of the first variable set of --hmac-key-env, the one the
backup recorded and $SO8T_AUDIT_HMAC_KEY; a backup of signed chains, or one that records a key variable, is refused
without a key unless --unchecked-signatures. Then logs/ (the queue and
spool under their own names), configs/ and the models' paths appear in --into, which must not hold them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path
from typing import NamedTuple

from ..core.config import ConfigError
from ..serve.config import (
    AUDIT_HMAC_KEY_ENV,
    QUEUE_URL_ENV,
    RuntimePaths,
    load_runtime_config,
    placed,
    runtime_paths,
)
from ..serve.escalation import QueueError
from ..workbench.backup import BackupError, backup, check_backup, restore
from ..workbench.backup.restore import recorded_key_env


class Sources(NamedTuple):
    """What a backup copies, from the options and the config."""

    log_dir: Path
    queue: str | Path | None
    configs: list[Path]
    models: list[Path]
    hmac_key_env: str
    flag_file: Path | None
    spool: Path | None
    chain: str = "audit.jsonl"


def _configured_queue(args, paths: RuntimePaths) -> str | Path | None:
    """The queue the service of ``--config`` (run with ``--log-dir`` = ``--logs``) writes to. Its file absent is an
    error (a backup without the queue would restore a gate with no open cases), unless --no-queue says so."""
    if args.no_queue:
        return None
    if args.db or paths.queue_url:
        return args.db or paths.queue_url
    if not paths.queue.is_file():
        where = f"moved into --logs {args.logs}" if args.logs else "as the config names it"
        raise BackupError(f"no escalation queue at {paths.queue} (escalation.queue_db of {args.config}, {where}); "
                          "give --logs the folder the service writes to (its --log-dir) or --db the queue, or "
                          "--no-queue if the service never kept one")
    return paths.queue


def _sources(args) -> Sources:
    mac_env = args.hmac_key_env
    log_dir = Path(args.logs) if args.logs else Path(os.environ.get("SO8T_LOG_DIR") or "logs")
    queue = None if args.no_queue else args.db or os.environ.get(QUEUE_URL_ENV)
    default = Path("configs")  # taken when it holds configs: the --config file is backed up either way
    configs = [Path(c) for c in args.configs] if args.configs else (
        [default] if default.is_dir() and any(default.glob("*.yaml")) else [])
    models = [Path(m) for m in args.model]
    flag_file = spool = None
    chain = "audit.jsonl"
    if args.config:
        config = load_runtime_config(args.config)
        paths = runtime_paths(config, args.logs)  # where `so8t serve --log-dir <--logs>` keeps every file
        log_dir = paths.audit.parent
        chain = Path(config.logging.audit_log).name  # the base name: the replicas' chains are found from it
        queue = _configured_queue(args, paths)
        mac_env = config.logging.hmac_key_env or mac_env
        flag_file = placed(config.service.emergency_flag_file, args.logs)  # where the service looks for it
        spool = paths.spool  # beside queue_db, even with a PostgreSQL queue
        if Path(args.config).resolve().parent not in [c.resolve() for c in configs]:
            configs.append(Path(args.config))
        if not args.model:
            for candidate in (config.model.checkpoint_path, config.model.gguf_path):
                if candidate and Path(candidate).exists():
                    models.append(Path(candidate))
        if config.escalation.router and Path(config.escalation.router).is_file():
            models.append(Path(config.escalation.router))  # who reviews a case comes back with the rest
        elif config.escalation.router:
            print(f"so8t backup: the router file {config.escalation.router} named by {args.config} is not there; "
                  "the backup has none (the service routes by keywords until one is fitted)", file=sys.stderr)
    return Sources(log_dir, queue, configs, models, mac_env, flag_file, spool, chain)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t backup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    parser.add_argument("--out", default=f"backup/{stamp}", help="the new backup folder (default backup/<UTC time>)")
    parser.add_argument("--config", help="a runtime config: its log folder, queue, model files and key variables")
    parser.add_argument("--logs", help="the log folder (default: the config's, else $SO8T_LOG_DIR, else logs/)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", help="the queue: a SQLite file or a postgresql:// URL (default: the config's, else "
                        "$SO8T_ESCALATION_URL, else <logs>/escalations.sqlite)")
    parser.add_argument("--configs", action="append", help="config folder or file to include (default configs/)")
    parser.add_argument("--model", action="append", default=[], help="a checkpoint folder or .gguf file (default: "
                        "the config's)")
    parser.add_argument("--include-models", action="store_true", help="copy the model files, not only manifests")
    where.add_argument("--no-queue", action="store_true", help="back up without an escalation queue (with --config, "
                        "its queue file missing is an error otherwise)")
    parser.add_argument("--hmac-key-env", default=AUDIT_HMAC_KEY_ENV)
    args = parser.parse_args(argv)
    try:
        src = _sources(args)
        manifest = backup(args.out, src.log_dir, src.queue, src.configs, src.models, args.include_models,
                          os.environ.get(src.hmac_key_env), src.flag_file, src.spool, chain=src.chain,
                          hmac_key_env=src.hmac_key_env)
    except (BackupError, ConfigError, QueueError, OSError) as exc:
        sys.exit(f"error: {exc}")
    if any(c.get("signed") for c in manifest["chains"].values()) and not os.environ.get(src.hmac_key_env):
        print(f"note: the chains are signed, but ${src.hmac_key_env} is not set here: their signatures were not "
              "checked (restore needs the key, or --unchecked-signatures)", file=sys.stderr)
    failed = {name: c["errors"] for name, c in manifest["chains"].items() if c["errors"]}
    for name, chain in manifest["chains"].items():
        state = "FAIL " + "; ".join(chain["errors"]) if chain["errors"] else f"head {chain['head']}"
        print(f"audit {name}: {chain['records']} records, {state}")
    queue_info = manifest["queue"]
    print(f"queue ({queue_info['kind']}): {queue_info.get('cases', 0)} cases, {queue_info.get('resolutions', 0)} "
          f"resolutions; spool: {manifest['spool']['entries']} entries")
    if manifest.get("emergency_flag"):
        print(f"emergency flag file: {manifest['emergency_flag']['source']} (the gate was in emergency mode; restored "
              f"as {manifest['emergency_flag']['stored']})")
    for hold in manifest.get("emergency_holds") or []:
        print(f"emergency hold of the admin endpoint: {hold['source']} (the gate was in emergency mode; restored as "
              f"{hold['stored']})")
    print(f"configs: {len(manifest['configs'])}; models: " + (", ".join(
        f"{m['path']} ({'files' if m['included'] else 'manifest'})" for m in manifest["models"]) or "none"))
    print(f"backup: {args.out} ({len(manifest['files'])} files)")
    if failed:
        print(f"error: {len(failed)} chain(s) did not verify; the copy is kept as evidence, restore refuses it",
              file=sys.stderr)
        return 1
    return 0


def _hmac_key(explicit: str | None, folder: str) -> tuple[str | None, str]:
    """The chains' HMAC key and the variable it was read from. BACKUP.json is not signed, so the variable it records
    only adds a place to look: the first set of --hmac-key-env, the recorded one and $SO8T_AUDIT_HMAC_KEY is read
    (a forger who re-hashed a chain and pointed the record at an unset variable switched the check off), and a
    recorded variable that holds another key than $SO8T_AUDIT_HMAC_KEY needs --hmac-key-env to say which."""
    recorded = recorded_key_env(folder)
    names = list(dict.fromkeys(n for n in (explicit, recorded, AUDIT_HMAC_KEY_ENV) if n))
    found = [n for n in names if os.environ.get(n)]
    if not found:
        return None, names[0]
    default = os.environ.get(AUDIT_HMAC_KEY_ENV)
    if not explicit and found[0] == recorded and default and default != os.environ[recorded]:
        raise BackupError(f"the backup records ${recorded} as the HMAC key's variable, but ${AUDIT_HMAC_KEY_ENV} "
                          "holds another key (BACKUP.json is not signed, so it cannot choose between them): pass "
                          "--hmac-key-env with the variable that holds the key the service signed with")
    return os.environ[found[0]], found[0]


def restore_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t restore", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backup", help="a folder written by so8t backup")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--into", help="where logs/, configs/ and the models go (must not hold them)")
    target.add_argument("--check", action="store_true", help="make every check, write nothing")
    parser.add_argument("--queue-url", help="put the escalation cases into this empty PostgreSQL queue")
    parser.add_argument("--hmac-key-env", help="variable holding the HMAC key (default: the one the backup records; "
                        f"when that is not set, {AUDIT_HMAC_KEY_ENV})")
    parser.add_argument("--unchecked-signatures", action="store_true", help="accept signed chains without their "
                        "key: the signatures are not checked (refused otherwise)")
    args = parser.parse_args(argv)
    unchecked = args.unchecked_signatures
    try:
        key, key_env = _hmac_key(args.hmac_key_env, args.backup)
        if args.check:
            checks = check_backup(args.backup, key, key_env=key_env, unchecked_signatures=unchecked)
            for line in checks["checked"]:
                print(f"ok   {line}")
            for note in checks["notes"]:
                print(f"note {note}")
            for problem in checks["problems"]:
                print(f"FAIL {problem}")
            return 1 if checks["problems"] else 0
        done = restore(args.backup, args.into, args.queue_url, key, key_env=key_env, unchecked_signatures=unchecked)
    except (BackupError, QueueError, OSError) as exc:
        sys.exit(f"error: {exc}")
    for line in done["checked"]:
        print(f"ok   {line}")
    for note in done["notes"]:
        print(f"note {note}")
    print("restored: " + ", ".join(done["restored"]))
    print(f"start the service on it: cd {args.into} && so8t serve --config configs/<config>.yaml --log-dir logs")
    return 0
