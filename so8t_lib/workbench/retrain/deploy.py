"""Step 5: export the promoted model to GGUF and start the runtime in test mode on the new file.

Only a candidate the gate promoted is exported, and only the very model the gate looked at: the gate's record
names the candidate's version (``name@`` the first 12 hex of its adapter's sha256), which must still be the
checkpoint's before the export and each exported file's after it (its ``so8t.model_version``, and the version the
runtime reports from it): a checkpoint rewritten in between is refused, nothing placed. The runtime then loads the
new file as production would (the sha256 sidecar is checked first) and decides a few requests with ``test_mode``:
its records are marked as tests, nothing is notified, and its chain must verify, read and checked with the keys the
runtime config names (``logging.encryption_key_env``, ``logging.hmac_key_env``; a variable it names that is not set
stops the deploy before the export). The files are exported into a staging folder and moved into the dist folder
only after that run passed, and never over a file of the same name with other bytes (a retrained model keeps its
name: that may be the file in service). Putting the file into service is left to a person (point the runtime
config's ``model.gguf_path`` at it and restart, or run ``so8t serve --model-path``): this step only shows that it
loads and decides.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ...core.checkpoint import checkpoint_version, resolve_checkpoint
from ...core.config import ConfigError
from ...core.io import sha256_file
from ...core.schema import MODEL_CONFIG_FILE
from ...export.gguf_meta import read_metadata
from ...export.placement import place
from ...export.quantize import export, staging_folder
from ...model.prompts import EXAMPLE_REQUESTS
from ...serve.audit_verify import read_chains, verify_chains
from ...serve.config import RuntimeConfig, load_runtime_config
from ...serve.runtime import Agent

GATE_FILE = "gate.json"


class NotPromoted(RuntimeError):
    """The gate refused the candidate, or was run on another model: nothing is exported."""


def checked_gate(gate_file: str | Path, candidate: str | Path) -> dict:
    """The gate's record, if it promoted exactly this candidate."""
    path = Path(gate_file)
    if not path.is_file():
        raise NotPromoted(f"no gate result at {path}: run so8t retrain evaluate first")
    try:
        gate = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 or not JSON
        raise NotPromoted(f"{path}: not a readable gate record ({type(exc).__name__}: {exc}); run so8t retrain "
                          "evaluate again") from None
    made_for = gate.get("candidate") if isinstance(gate, dict) else None
    if not isinstance(made_for, dict):
        raise NotPromoted(f"{path}: not a gate record (no candidate it was made for); run so8t retrain evaluate again")
    folder = resolve_checkpoint(candidate)
    name = yaml.safe_load((folder / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))["model"]["name"]
    version = checkpoint_version(folder, name)
    if made_for.get("version") != version:
        raise NotPromoted(f"{path} was made for {made_for.get('version')}, but {folder} is now {version}: run the "
                          "gate again")
    if gate.get("promote") is not True:  # only an explicit yes promotes
        refusals = gate.get("refusals")
        said = "; ".join(map(str, refusals)) if isinstance(refusals, list) and refusals else "no promote: true"
        raise NotPromoted(f"the gate refused to promote this model: {said}")
    return gate


def _audit_keys(config: RuntimeConfig) -> tuple[str | None, str | None]:
    """(encryption key, HMAC key) of the chain the runtime of ``config`` writes, read as the runtime reads them
    (``Agent._secret``): from the variables ``logging.encryption_key_env`` and ``logging.hmac_key_env`` name, None
    where it names none; ConfigError naming a variable that is not set."""
    why = "the smoke test's audit log is written and read back with it; set it as for the service"
    return (Agent._secret(config.logging.encryption_key_env, why),  # noqa: SLF001 - the runtime's own reading
            Agent._secret(config.logging.hmac_key_env, why))  # noqa: SLF001


def _test_records(agent: Agent, log_dir: str | Path) -> tuple[list[dict], list[str]]:
    """The decision records of the test-mode run's chains in ``log_dir`` and what their verification found, both
    with the keys the agent's config names; a chain that cannot be read (another key) is a ConfigError."""
    key, hmac_key = _audit_keys(agent.config)
    name = Path(agent.config.logging.audit_log).name
    try:
        records = [r for _, r in read_chains(log_dir, name, key) if r.get("event") == "decision"]
        problems = [e for r in verify_chains(log_dir, name, hmac_key=hmac_key).values() for e in r["errors"]]
    except (ValueError, OSError) as exc:  # encrypted with another key, a lock held, a file that cannot be read
        raise ConfigError(f"the test-mode run's audit log in {log_dir} cannot be read: {exc}") from None
    return records, problems


def _smoke_test(target: Path, runtime_config: str | Path, log_dir: str | Path,
                requests: list[tuple[str, str | None]] | None) -> tuple[str, list[dict], int]:
    """The runtime in test mode on ``target``: (model version, results, test records); ConfigError when it
    cannot load the file, fails closed on a request, or leaves a log that does not verify."""
    overrides = [f"model.checkpoint_path={target}", "model.use_gguf=true", f"model.gguf_path={target}",
                 "inference.generate_responses=false"]
    # its own queue in log_dir even where SO8T_ESCALATION_URL names production's: test cases stay out of it
    agent = Agent.from_config(runtime_config, overrides, test_mode=True, log_dir=str(log_dir), shared_queue=False)
    try:
        if agent.load_error:
            raise ConfigError(f"the runtime could not load {target.name}: {agent.load_error}")
        results = agent.run_batch([{"user_request": r, "context": c} for r, c in (requests or EXAMPLE_REQUESTS)])
    finally:
        agent.close()
    records, problems = _test_records(agent, log_dir)
    failed = [r["error"] for r in results if "fail_closed" in (r.get("flags") or [])]
    if failed:
        raise ConfigError(f"the runtime loaded {target.name} but failed closed on {len(failed)} request(s): {failed[0]}")
    if problems or not all(r.get("test") for r in records):
        raise ConfigError(f"the test-mode run on {target.name} left an audit log that does not verify or holds "
                          f"records not marked as tests: {problems}")
    return agent.model_version, results, len(records)


def _same_model(promoted: str, exported: dict[str, str], candidate: str | Path) -> None:
    """NotPromoted unless every exported file (what: its version) is the model the gate promoted: the checkpoint
    may have been rewritten after the gate's record was checked (a ``retrain train --resume`` into the same
    folder)."""
    other = {what: version for what, version in exported.items() if version != promoted}
    if other:
        said = ", ".join(f"{what} is {version}" for what, version in other.items())
        raise NotPromoted(f"the gate promoted {promoted}, but {said}: {candidate} changed after the gate's record "
                          "was checked (is a training run still writing to it?); nothing was placed, run the gate "
                          "again once it is finished")


def _place(files: list[Path], dist: Path, staging: Path) -> list[Path]:
    """Move the staged files (and sidecars) into ``dist``, all or none (``export.placement``: a folder in the
    way of any of them is named before the first move). A file of the same name with other bytes is never
    replaced: it may be the one in service (a retrained model keeps its name)."""
    clashes = [dist / f.name for f in files if (dist / f.name).is_file()
               and sha256_file(dist / f.name) != sha256_file(f)]
    if clashes:
        raise ConfigError(f"{', '.join(map(str, clashes))} already exist with other contents (perhaps the model in "
                          "service): choose a new --dist folder; nothing was replaced")
    return place(files, dist, [], staging / "replaced")


def deploy(candidate: str | Path, gate_file: str | Path, dist: str | Path, quants: list[str] | None = None,
           runtime_config: str | Path = "configs/basic.yaml", log_dir: str | Path = "smoke-logs",
           requests: list[tuple[str, str | None]] | None = None) -> dict:
    """Export the promoted candidate into a staging folder, decide ``requests`` (default: the example
    requests) with the runtime in test mode on the last file, and only then move the files into
    ``dist``: a failed export or test run leaves nothing there. Returns what was written and decided."""
    promoted = checked_gate(gate_file, candidate)["candidate"]["version"]
    _audit_keys(load_runtime_config(runtime_config))  # a key variable that is not set: said before the export
    dist = Path(dist)
    dist.mkdir(parents=True, exist_ok=True)
    # the export's own locked staging: a killed deploy's folder (a whole GGUF ladder) goes at the next export or
    # deploy into dist, a running one's never
    with staging_folder(dist, ".deploy-") as staging:
        staged = export(candidate, staging, list(quants or []), progress=False)
        _same_model(promoted, {f.name: read_metadata(f)["so8t.model_version"] for f in staged}, candidate)
        version, results, records = _smoke_test(staged[-1], runtime_config, log_dir, requests)
        _same_model(promoted, {f"{staged[-1].name} as the runtime loaded it": version}, candidate)
        files = _place(staged, dist, staging)
    return {"files": [str(f) for f in files], "runtime_file": str(files[-1]), "model_version": version,
            "decisions": [{"decision": r["decision"], "category": r["category"], "error": r["error"]} for r in results],
            "test_records": records, "log_dir": str(log_dir)}
