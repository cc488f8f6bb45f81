"""The application log (``logging.log_file``, ``logging.log_level``): what the ``so8t.*`` loggers say
about the runtime (load warnings, audit and queue failures, spooled and overdue cases). The audit
log is separate and is the record of decisions; this one is for the operator."""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path

from ..core.config import ConfigError

_HANDLERS: dict[Path, logging.Handler] = {}
_LOCK = threading.Lock()
_CONFIGURED = {"level": logging.NOTSET}  # the last log_level configured
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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
                handler.setFormatter(logging.Formatter(FORMAT))
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
