"""Keep library notices out of task logs; they go to a log file under the data root.

Importing Great Expectations logs ~200 INFO notices (``_docs_decorators``:
"Skipping registering function … because it is a closure", datasource config
chatter) that buried a data-quality failure's summary in its task log.  Inside
a task, the ``great_expectations`` logger writes below WARNING only to
``<PIPELINES_HOME>/logs/great_expectations.log``; its warnings and errors still
reach the task log.  Only that library's logger is touched: every other
logger, and Python warnings, keep Airflow's handling.
"""

from __future__ import annotations

import logging
from logging.handlers import RotatingFileHandler
from pathlib import Path

#: Libraries whose INFO notices never help an operator reading a task log.
NOISY_LIBRARIES = ("great_expectations",)
LOG_FILE_BYTES = 5_000_000


class _ForwardWarnings(logging.Handler):
    """Hand WARNING+ records on to the root logger's handlers (the task log)."""

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


def library_log_file(home: Path) -> Path:
    """Where the libraries' notices of every task go (rotated at 5 MB, two backups)."""
    return home / "logs" / "libraries.log"


def route_library_notices(home: Path) -> Path:
    """Send the noisy libraries' records to `library_log_file` (idempotent); return the file.

    Call it before the library is imported: most of its notices come at import.
    """
    path = library_log_file(home)
    for name in NOISY_LIBRARIES:
        logger = logging.getLogger(name)
        if any(getattr(h, "_pipelines_route", False) for h in logger.handlers):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = RotatingFileHandler(path, maxBytes=LOG_FILE_BYTES, backupCount=2, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        forward = _ForwardWarnings(level=logging.WARNING)
        for handler in (to_file, forward):
            setattr(handler, "_pipelines_route", True)  # noqa: B010 - marks our handlers for idempotence
            logger.addHandler(handler)
        logger.propagate = False
    return path
