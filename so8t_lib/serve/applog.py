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
        levels = [h.level for h in _HANDLERS.values()] + [numeric]
        logger.setLevel(min(levels))
    return logger
