"""deploy/ as an operator installs it on one Linux host: the systemd units (the service; the daily audit
verification and its timer), the environment file and the logrotate file for the application log.

There is no systemd running here, so the unit is checked by ``systemd-analyze verify`` and then run the way
systemd would run it: its ExecStart in its WorkingDirectory with only its environment (EnvironmentFile= and
Environment=), stopped with its KillSignal within its TimeoutStopSec. The install paths (/opt/so8t, /etc/so8t,
/var/log/so8t, /var/cache/so8t) are moved under a temporary folder; nothing else in the files is changed.
Between start and stop, logrotate runs the shipped file against the live application log; after the stop, the
verification unit's command runs twice on the log folder the service left.
"""

from __future__ import annotations

import getpass
import grp
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "so8t-gate.service"
VERIFY_UNITS = [ROOT / "deploy" / "systemd" / f"so8t-audit-verify.{kind}" for kind in ("service", "timer")]
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "so8t.env.example"
LOGROTATE = ROOT / "deploy" / "logrotate" / "so8t"
PRODUCTION = ROOT / "configs" / "production.yaml"
SO8T = Path(sys.executable).parent / "so8t"  # the console script of the environment running the tests


def read_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value in order (a unit may repeat a key, e.g. Environment=); a line ending in a
    backslash goes on in the next, as systemd reads it."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def read_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format as the example uses it: KEY=value lines, # comments."""
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def relocate(text: str, root: Path) -> str:
    """The install paths moved under ``root`` (the checkout stays where it is)."""
    for installed, here in (("/opt/so8t/.venv/bin/so8t", str(SO8T)), ("/opt/so8t", str(ROOT)),
                            ("/etc/so8t", str(root / "etc")), ("/var/log/so8t", str(root / "log")),
                            ("/var/cache/so8t", str(root / "cache")), ("/var/lib/so8t", str(root / "lib")),
                            ("/var/lib/prometheus/node-exporter", str(root / "textfile"))):
        text = text.replace(installed, here)
    return text


def systemd_analyze(*units: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_units_pass_systemd_analyze_without_a_warning(tmp_path):
    units = []
    for shipped in (UNIT, *VERIFY_UNITS):
        units.append(tmp_path / shipped.name)
        units[-1].write_text(relocate(shipped.read_text(encoding="utf-8"), tmp_path), encoding="utf-8")
    checked = systemd_analyze(*units)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr
    unit = units[0]
    broken = tmp_path / "broken.service"  # the check above can fail: a misspelt signal is reported
    broken.write_text(unit.read_text(encoding="utf-8").replace("KillSignal=SIGTERM", "KillSignal=SIGTERN"),
                      encoding="utf-8")
    assert "SIGTERN" in systemd_analyze(broken).stderr


def test_the_environment_example_names_every_secret_the_production_config_reads():
    config = yaml.safe_load(PRODUCTION.read_text(encoding="utf-8"))
    from so8t_lib.serve.config import RuntimeConfig

    parsed = RuntimeConfig.model_validate(config)
    wanted = {parsed.service.client_keys_env, parsed.service.reviewer_keys_env, parsed.logging.hmac_key_env,
              parsed.logging.encryption_key_env, "SLACK_WEBHOOK_URL", "SMTP_USERNAME", "SMTP_PASSWORD"}
    example = read_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert wanted <= set(example), wanted - set(example)
    unit = read_unit(UNIT.read_text(encoding="utf-8"))["Service"]
    stop_grace = float(unit["TimeoutStopSec"][0])
    budget = parsed.service.stop_budget_s  # SIGTERM to exit: the grace, then the 503s, the spool and the log
    assert budget > parsed.service.shutdown_timeout_s
    assert stop_grace > budget, f"systemd would SIGKILL ({stop_grace:g}s) before the stop budget ({budget:g}s) ends"


def test_the_documented_check_command_passes_every_environment_of_the_unit():
    """--check must see what a start sees: a variable the unit sets (HF_HUB_OFFLINE, the caches) but the
    documented command leaves out would make --check load differently from the service."""
    docs = (ROOT / "docs" / "serving.md").read_text(encoding="utf-8")
    command = next(block for block in docs.split("```bash")[1:] if "--check" in block.split("```")[0])
    command = command.split("```")[0]
    unit = read_unit(UNIT.read_text(encoding="utf-8"))["Service"]
    missing = [setting for setting in unit["Environment"] if setting not in command]
    assert not missing, f"docs/serving.md's --check command leaves out {missing}"
    for key in ("User", "WorkingDirectory", "EnvironmentFile"):
        assert f"{key}={unit[key][0]}" in command


def filled_secrets(example: dict[str, str]) -> dict[str, str]:
    """The example with each placeholder replaced as its comment says to make it."""
    from cryptography.fernet import Fernet

    filled = dict(example)
    for key, value in example.items():
        if "REPLACE_WITH_A_FERNET_KEY" in value:
            filled[key] = Fernet.generate_key().decode()
        elif "REPLACE_WITH_A_SECRET" in value:
            filled[key] = value.replace("REPLACE_WITH_A_SECRET", secrets.token_urlsafe(32))
    return filled


class UnitProcess:
    """The unit's ExecStart as systemd starts it; ``url`` from the first line it prints."""

    def __init__(self, service: dict[str, list[str]]) -> None:
        self.env = env = self.environment(service)
        self.kill_signal = getattr(signal, service["KillSignal"][0])
        self.stop_grace = float(service["TimeoutStopSec"][0])
        self.proc = subprocess.Popen(shlex.split(service["ExecStart"][0]), cwd=service["WorkingDirectory"][0], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout] and None, daemon=True).start()
        try:
            first = lines.get(timeout=180)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError("the unit's ExecStart printed nothing in 180 s") from None
        assert "listening on http://" in first, first + self.proc.stderr.read()
        self.url = first.split("listening on ", 1)[1].split()[0]

    @staticmethod
    def environment(service: dict[str, list[str]]) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}  # systemd's own few, then the unit's
        for env_file in service.get("EnvironmentFile", []):
            env |= read_env_file(Path(env_file).read_text(encoding="utf-8"))
        return env | dict(item.split("=", 1) for item in service.get("Environment", []))

    @classmethod
    def check(cls, service: dict[str, list[str]]) -> subprocess.CompletedProcess:
        """The unit's command with --check, in the unit's environment."""
        return subprocess.run([*shlex.split(service["ExecStart"][0]), "--check"], cwd=service["WorkingDirectory"][0],
                              env=cls.environment(service), capture_output=True, text=True, timeout=300)

    def stop(self) -> int:
        self.proc.send_signal(self.kill_signal)
        return self.proc.wait(timeout=self.stop_grace)


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate is not installed (.ci/run installs it)")
def test_the_unit_serves_and_stops_and_logrotate_turns_its_application_log_over(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "so8t.env").write_text(
        "\n".join(f"{k}={v}" for k, v in filled_secrets(read_env_file(ENV_EXAMPLE.read_text(encoding="utf-8"))).items()),
        encoding="utf-8")
    config = yaml.safe_load(PRODUCTION.read_text(encoding="utf-8"))  # as shipped, but no mail or chat, any free port
    config["escalation"] |= {"enable_notifications": False, "email_notifications": False}
    config["service"] = {"port": 0}
    (tmp_path / "etc" / "production.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for made_by_systemd in ("log", "cache", "lib"):  # LogsDirectory=, CacheDirectory=, StateDirectory=
        (tmp_path / made_by_systemd).mkdir(mode=0o750)
    service = read_unit(relocate(UNIT.read_text(encoding="utf-8"), tmp_path))["Service"]
    checked = UnitProcess.check(service)  # what the docs say to run before the first start
    assert checked.returncode == 3 and "problem: model could not be loaded" in checked.stdout, checked.stdout
    unit = UnitProcess(service)
    log_dir = Path(unit.env["SO8T_LOG_DIR"])
    app_log = log_dir / Path(config["logging"]["log_file"]).name
    client = unit.env["SO8T_CLIENT_KEYS"].split(":", 1)[1]
    reviewer = unit.env["SO8T_REVIEWER_KEYS"].split(":", 1)[1]
    try:
        # the shipped config names a 7B GGUF file this checkout does not have: the service runs, failing closed
        answer = httpx.post(f"{unit.url}/v1/decide", json={"user_request": "経費精算の締め日は？"},
                            headers={"Authorization": f"Bearer {client}"}, timeout=60)
        assert answer.status_code == 200 and answer.json()["decision"] == "ESCALATE", answer.text
        assert httpx.get(f"{unit.url}/readyz", timeout=30).status_code == 503
        before = app_log.read_text(encoding="utf-8")
        assert "model could not be loaded" in before, before  # the operator reads why in the application log
        audit_files = {p.name: p.read_bytes() for p in log_dir.glob("audit*")}

        rotate_conf = tmp_path / "logrotate.conf"  # the shipped file, owner names made this machine's
        rotate_conf.write_text(relocate(LOGROTATE.read_text(encoding="utf-8"), tmp_path).replace(
            "so8t so8t", f"{getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name}"),
            encoding="utf-8")
        rotated = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "logrotate.state"), str(rotate_conf)],
                                 capture_output=True, text=True, timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        assert {p.name: p.read_bytes() for p in log_dir.glob("audit*")} == audit_files, "logrotate touched the audit log"
        assert (log_dir / f"{app_log.name}.1").read_text(encoding="utf-8") == before
        assert app_log.exists() and app_log.stat().st_size == 0 and oct(app_log.stat().st_mode & 0o777) == "0o640"

        switched = httpx.post(f"{unit.url}/v1/admin/emergency", json={"enabled": True, "reason": "rotation drill"},
                              headers={"Authorization": f"Bearer {reviewer}"}, timeout=30)
        assert switched.status_code == 200, switched.text
        assert "rotation drill" in app_log.read_text(encoding="utf-8")  # written to the new file, not the renamed one
        assert "rotation drill" not in (log_dir / f"{app_log.name}.1").read_text(encoding="utf-8")
        assert len(list(log_dir.glob("audit*"))) == len(audit_files)  # the switch was recorded in the same chain
    finally:
        status = unit.stop()
    assert status == -unit.kill_signal, unit.proc.stderr.read()
    assert re.search(r"shutdown complete", app_log.read_text(encoding="utf-8"))
    verifier = read_unit(relocate(VERIFY_UNITS[0].read_text(encoding="utf-8"), tmp_path))["Service"]
    for run in ("first", "second"):  # the timer's job: the second run checks the heads the first one recorded
        verified = subprocess.run(shlex.split(verifier["ExecStart"][0]), cwd=verifier["WorkingDirectory"][0],
                                  env=UnitProcess.environment(verifier), capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0 and "heads of 1 chain(s) recorded" in verified.stdout, (run, verified.stdout,
                                                                                              verified.stderr)
    assert "the first run" not in verified.stdout and (tmp_path / "lib" / "audit-heads.json").is_file()
    assert "so8t_audit_verify_ok 1.0" in (tmp_path / "textfile" / "so8t_audit.prom").read_text(encoding="utf-8")
