"""What an escalation queue raises: store faults (``QueueError``, a 503 over HTTP) and resolutions the case's
state does not allow (``ResolutionConflict``, a 409), kept apart so callers can tell "try again" from "check
what you asked"."""

from __future__ import annotations


class QueueError(RuntimeError):
    """The queue cannot be used: missing, not a queue, or not answering; the message names it."""


class QueueUnavailable(QueueError):
    """The queue did not answer within the bounded wait (locked by another process, or unreachable)."""


class ResolvedButUnread(QueueError):
    """The resolution was committed (and audited), but reading the case back failed: it must not be reported
    as "not resolved"."""


class ResolutionConflict(ValueError):
    """A resolution the case's state does not allow; ``code`` is how the HTTP API names it (409)."""
    code = "conflict"


class AlreadyResolved(ResolutionConflict):
    """A second resolution without ``supersede``: the first must not be overwritten silently."""
    code = "already_resolved"


class NothingToSupersede(ResolutionConflict):
    """``supersede`` on a case nobody resolved: most likely the wrong case id, so it is not taken as a first
    decision."""
    code = "not_resolved"
