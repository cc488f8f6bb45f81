"""The application log (``logging.log_file``, ``logging.log_level``): what the ``so8t.*`` loggers say
about the runtime (load warnings, audit and queue failures, spooled and overdue cases). The audit
log is separate and is the record of decisions; this one is for the operator."""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path

from ..core.config import ConfigError
from ..core.unicode_text import LINE_STEERING

_HANDLERS: dict[Path, logging.Handler] = {}
_LOCK = threading.Lock()
_CONFIGURED = {"level": logging.NOTSET}  # the last log_level configured
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LINE_STEERING written as escapes: a name or a reason from a request cannot forge a log line or hide part of one
_ESCAPES = {ord(c): f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in LINE_STEERING}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


class OneLineFormatter(logging.Formatter):
    """One line per message, whatever the message's arguments hold (a traceback still follows on its own lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's naming
        return super().formatMessage(record).translate(_ESCAPES)


def configure_logging(level: str, log_file: Path | None) -> logging.Logger:
    """Set the so8t loggers' level and add one file handler per log file (once per process; a
    WatchedFileHandler, so an outside logrotate is followed). ConfigError if the file cannot be opened."""
    logger = logging.getLogger("so8t")
    numeric = logging.getLevelName(level)
    with _LOCK:
        if log_file is not None:
            path = Path(log_file).resolve()
            handler = _HANDLERS.get(path)
            if handler is None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
                except OSError as exc:
                    raise ConfigError(f"logging.log_file: cannot open {path} ({type(exc).__name__}: {exc})") from None
                handler.setFormatter(OneLineFormatter(FORMAT))
                logger.addHandler(handler)
                _HANDLERS[path] = handler
            handler.setLevel(numeric)
        _CONFIGURED["level"] = numeric
        settle_level()
    return logger


def settle_level() -> None:
    """The so8t logger lets through what the configured level or any of its handlers asks for: a handler
    attached for a while (``so8t serve --check`` collecting the warnings of a start) sees its warnings even
    under log_level ERROR, while the log file keeps its own level."""
    logger = logging.getLogger("so8t")
    levels = [h.level for h in logger.handlers if h.level > logging.NOTSET]
    if _CONFIGURED["level"] > logging.NOTSET:
        levels.append(_CONFIGURED["level"])
    logger.setLevel(min(levels, default=logging.NOTSET))
