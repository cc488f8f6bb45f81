"""The emergency switch: escalate everything, now, without a restart (the manual's emergency
procedure, without stopping the agent).

Three sources can hold emergency mode: the config (``mode: emergency``, the floor: it cannot be
switched off at runtime), the admin endpoint, and a flag file (``service.emergency_flag_file``,
looked for every ``flag_poll_s``; its first line is the reason). The agent is in emergency mode while
any source holds it. Every change of a source is an audit record (``event: mode_change``). Turning
emergency *on* happens even when that record cannot be written (the safe direction; the answer says
so); turning it *off* needs the record first, else the service stays in emergency mode.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from pathlib import Path

from ..audit import AuditWriteError
from ..outcome import utc_timestamp
from ..runtime import Agent

logger = logging.getLogger("so8t.service")
API, FILE, CONFIG = "api", "flag_file", "config"
EMERGENCY, NORMAL = "emergency", "normal"


class SwitchRefused(RuntimeError):
    """The switch cannot be moved (the config holds emergency mode, or the record could not be written)."""


class EmergencySwitch:
    def __init__(self, agent: Agent, flag_file: Path, on_change=None) -> None:
        self.agent, self.flag_file, self._on_change = agent, Path(flag_file), on_change
        self.sources: dict[str, dict] = {}
        if agent.config.mode == EMERGENCY:
            self.sources[CONFIG] = {"by": "config", "reason": "mode: emergency in the config", "since": _now()}
        self._lock = threading.Lock()

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
            else:
                error = self._audit(record)
                if error is not None:
                    raise SwitchRefused(f"emergency mode stays on: the switch could not be recorded ({error})")
                del self.sources[source]
                self.agent.set_mode(after)
            logger.warning("emergency mode %s by %s (%s): %s; the gate is now in %s mode",
                           "held" if enabled else "released", by, source, reason, after)
            state = {"mode": after, "sources": {k: dict(v) for k, v in self.sources.items()}, "changed": True,
                     "audited": error is None, "error": error}
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
