"""The emergency switch: escalate everything, now, without a restart (the manual's emergency
procedure, without stopping the agent).

Three sources can hold emergency mode: the config (``mode: emergency``, the floor: it cannot be
switched off at runtime), the admin endpoint, and a flag file (``service.emergency_flag_file``,
looked for every ``flag_poll_s``; its first line is the reason). The agent is in emergency mode while
any source holds it. Every change of a source is an audit record (``event: mode_change``). Turning
emergency *on* happens even when that record cannot be written (the safe direction; the answer says
so); turning it *off* needs the record first, else the service stays in emergency mode.

The admin endpoint's hold is also kept in a state file beside the flag file (``api_state_file``), so a
restart (a crash, ``Restart=``, a deploy) comes back in emergency mode, as the audit log's last record
says, instead of answering ALLOW. A state file that cannot be read holds emergency mode too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from pathlib import Path

from ...core.io import atomic_write_text
from ..audit import AuditWriteError
from ..config import replica_log_name
from ..outcome import utc_timestamp
from ..runtime import Agent

logger = logging.getLogger("so8t.service")
API, FILE, CONFIG = "api", "flag_file", "config"
EMERGENCY, NORMAL = "emergency", "normal"


class SwitchRefused(RuntimeError):
    """The switch cannot be moved (the config holds emergency mode, or the record could not be written)."""


def api_state_file(flag_file: str | Path, replica: str | None = None) -> Path:
    """Where the admin endpoint's hold outlives the process: ``EMERGENCY.api.json`` beside the flag file, one per
    replica (``EMERGENCY.api-r2.json``): each process holds its own, so one replica's release cannot drop
    another's."""
    flag_file = Path(flag_file)
    return replica_log_name(flag_file.with_name(f"{flag_file.name}.api.json"), replica)


class EmergencySwitch:
    def __init__(self, agent: Agent, flag_file: Path, on_change=None, state_file: Path | None = None) -> None:
        self.agent, self.flag_file, self._on_change = agent, Path(flag_file), on_change
        self.state_file = Path(state_file) if state_file is not None else api_state_file(self.flag_file)
        self._releasing = self.state_file.with_name(f"{self.state_file.name}.releasing")  # set aside while recorded
        self.sources: dict[str, dict] = {}
        if agent.config.mode == EMERGENCY:
            self.sources[CONFIG] = {"by": "config", "reason": "mode: emergency in the config", "since": _now()}
        self._lock = threading.Lock()
        self._restore()

    def _restore(self) -> None:
        """Take back the admin endpoint's hold from the state file a previous process left (no audit record: the
        log's last mode_change already says it is on); one that cannot be read holds emergency mode too, and so
        does one a release had set aside when the process died (the release may not have been recorded)."""
        try:
            if self._releasing.exists() and not self.state_file.exists():
                os.replace(self._releasing, self.state_file)
            saved = json.loads(self.state_file.read_text(encoding="utf-8"))
            entry = {k: saved[k] for k in ("by", "reason", "since") if isinstance(saved[k], str)}
            if len(entry) != 3:
                raise ValueError("by, reason and since must be text")
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:  # json's errors are ValueErrors
            problem = f"{type(exc).__name__}: {exc}"
            logger.error("the emergency state file %s cannot be read (%s): emergency mode held (fail-closed); "
                         "release it with POST /v1/admin/emergency enabled: false, or remove the file and restart",
                         self.state_file, problem)
            entry = {"by": f"state file {self.state_file}", "reason": f"unreadable state file ({problem})",
                     "since": _now()}
        else:
            logger.warning("emergency mode restored from %s: held through the API by %s since %s (%s); every request "
                           "is escalated until POST /v1/admin/emergency enabled: false", self.state_file,
                           entry["by"], entry["since"], entry["reason"])
        self.sources[API] = {**entry, "restored_from": str(self.state_file)}
        self.agent.set_mode(EMERGENCY)

    @property
    def mode(self) -> str:
        return EMERGENCY if self.sources else NORMAL

    def state(self) -> dict:
        with self._lock:
            return {"mode": self.mode, "sources": {k: dict(v) for k, v in self.sources.items()}}

    def set(self, source: str, enabled: bool, by: str, reason: str) -> dict:
        """Hold or release emergency mode for one source; returns the state plus changed/audited/error."""
        with self._lock:
            if source == CONFIG:
                raise SwitchRefused("the config's mode cannot be changed at runtime")
            if enabled == (source in self.sources):
                return {"mode": self.mode, "sources": dict(self.sources), "changed": False, "audited": True,
                        "error": None}
            before = self.mode
            after = EMERGENCY if enabled or (set(self.sources) - {source}) else NORMAL
            record = {"event": "mode_change", "timestamp": utc_timestamp(), "mode": after, "previous": before,
                      "source": source, "enabled": enabled, "by": by, "note": reason,
                      "test": self.agent.test_mode}
            if enabled:
                self.sources[source] = {"by": by, "reason": reason, "since": _now()}
                self.agent.set_mode(after)
                error = self._audit(record)
                unsaved = self._save(self.sources[source]) if source == API else None
            else:
                if source == API:
                    self._set_aside()
                error = self._audit(record)
                if error is not None:
                    if source == API:
                        self._put_back()  # still held: a restart must hold it too
                    raise SwitchRefused(f"emergency mode stays on: the switch could not be recorded ({error})")
                if source == API:
                    self._drop_aside()
                del self.sources[source]
                self.agent.set_mode(after)
                unsaved = None
            logger.warning("emergency mode %s by %s (%s): %s; the gate is now in %s mode",
                           "held" if enabled else "released", by, source, reason, after)
            state = {"mode": after, "sources": {k: dict(v) for k, v in self.sources.items()}, "changed": True,
                     "audited": error is None, "error": "; ".join(filter(None, (error, unsaved))) or None}
            if self._on_change is not None:  # under the lock: two changes in a row reach it in their order
                self._on_change(after)
        return state

    def _audit(self, record: dict) -> str | None:
        try:
            self.agent.audit.append(record)
            return None
        except AuditWriteError as exc:
            logger.error("the emergency switch could not be recorded: %s", exc)
            return f"audit write failed: {exc}"

    def _save(self, entry: dict) -> str | None:
        """Keep the API's hold for the next process; None, or why it could not (held now, lost at a restart)."""
        try:
            atomic_write_text(self.state_file, json.dumps({"source": API, **entry}, ensure_ascii=False) + "\n")
            return None
        except OSError as exc:
            logger.error("the emergency state file %s could not be written (%s): a restart would not hold emergency "
                         "mode; create the flag file %s as well", self.state_file, exc, self.flag_file)
            return f"not kept across a restart: {self.state_file} could not be written ({exc}); create the flag file"

    def _set_aside(self) -> None:
        """Move the API's state file aside before the release is recorded (a rename: it needs no free space, so a
        full disk that refuses the record can still have it put back); one that cannot be moved would bring
        emergency mode back at the next start, so the release is refused instead."""
        try:
            if self.state_file.exists() and not self.state_file.is_file():
                raise IsADirectoryError(f"{self.state_file} is not a file")
            os.replace(self.state_file, self._releasing)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise SwitchRefused(f"emergency mode stays on: its state file {self.state_file} could not be moved "
                                f"aside ({exc})") from None

    def _drop_aside(self) -> None:
        try:
            self._releasing.unlink(missing_ok=True)
        except OSError as exc:  # recorded as released, but the next start would hold emergency mode again
            logger.error("the emergency state file set aside at %s could not be removed (%s): remove it, or the next "
                         "start holds emergency mode again", self._releasing, exc)

    def _put_back(self) -> None:
        try:
            if self._releasing.exists():
                os.replace(self._releasing, self.state_file)
            else:  # there was none (it could not be written when the hold was set): try to write it now
                self._save(self.sources[API])
        except OSError as exc:  # the next start still finds it aside and holds emergency mode (_restore)
            logger.error("the emergency state file could not be put back from %s (%s)", self._releasing, exc)

    def poll_file(self) -> dict | None:
        """Follow the flag file: its appearance holds emergency mode, its removal releases it."""
        present = self.flag_file.is_file()
        if present == (FILE in self.sources):
            return None
        reason = "flag file removed"
        if present:
            try:
                lines = self.flag_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()
                reason = lines[0][:500] if lines else "flag file present"
            except OSError as exc:
                reason = f"flag file present (unreadable: {exc})"
        try:
            return self.set(FILE, present, f"flag file {self.flag_file}", reason)
        except SwitchRefused as exc:
            logger.error("%s", exc)
            return None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
