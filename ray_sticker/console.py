"""What a user of the command line sees, and where the rest goes.

The console shows the library's own messages (progress lines, warnings a user can act on),
errors from anywhere, and the result tables (:func:`format_table`). Everything else that
Ray, DeepSpeed, torch and transformers log or warn in this process goes to the command's log
file, ``$RAY_STICKER_HOME/logs/<command>-<time>.log``, with the library's messages too.
``--verbose`` shows everything on the console as well, and echoes the output of Ray's
workers (without it, that output stays in Ray's log files on each node).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
from typing import Any

LIBRARY = "ray_sticker"
_OURS = "_ray_sticker_handler"  # marks the handlers setup_logging adds


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """columns: (header, key, format spec)."""
    cells = [[h for h, _, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(k) is None else format(row[k], f)) if not isinstance(row.get(k), str)
                      else row[k] for _, k, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _ConsoleFilter(logging.Filter):
    """The library's records at ``level`` and above, and every other logger's errors."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == LIBRARY or record.name.startswith(LIBRARY + ".")
        return record.levelno >= (self.level if ours else logging.ERROR)


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` (or ``sys.stderr``) is when a record comes."""

    def __init__(self, stderr: bool):
        self._stderr = stderr
        super().__init__()

    @property
    def stream(self):
        return sys.stderr if self._stderr else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


class _ConsoleFormatter(logging.Formatter):
    """Progress and information as plain lines; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return text


def log_path(command: str) -> str:
    from ray_sticker.config import default_home

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(default_home(), "logs", f"{command}-{stamp}-{os.getpid()}.log")


def setup_logging(command: str, verbose: bool = False, quiet: bool = False) -> str:
    """Console and log-file handlers on the root logger (see module doc), replacing those of an
    earlier call; Python warnings are logged too. Returns the log file's path."""
    path = log_path(command)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.INFO)
    to_file = logging.FileHandler(path)
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = _ConsoleHandler(stderr=quiet)
    if verbose:
        console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        console.addFilter(_ConsoleFilter(logging.WARNING if quiet else logging.INFO))
        console.setFormatter(_ConsoleFormatter())
    for handler in (to_file, console):
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    logging.getLogger(LIBRARY).setLevel(logging.INFO)
    logging.captureWarnings(True)
    route_library_loggers()
    return path


class _ToRoot(logging.Filter):
    """On a logger that has a console handler of its own and does not propagate (DeepSpeed's
    prints to stdout): hands each record to the root logger's handlers instead of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


def _console_handler(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def route_library_loggers() -> None:
    """Once :func:`setup_logging` has run: the libraries that print through console handlers of
    their own log through the root logger's handlers instead. Ray's, Ray Data's, torch's and
    transformers' loggers (configured when they are imported: call this after, as ``init_ray``
    does) lose their console handlers and propagate; DeepSpeed's gets a filter that outlives
    the handler it adds whenever it is imported."""
    if not any(getattr(h, _OURS, False) for h in logging.getLogger().handlers):
        return
    for name, console_only in (("ray", True), ("ray.data", True), ("torch", False), ("transformers", False)):
        logger = logging.getLogger(name)  # Ray's keep their session log files; torch's handler is a console one
        for handler in [h for h in logger.handlers if _console_handler(h) or not console_only]:
            logger.removeHandler(handler)
        logger.propagate = True
    deepspeed = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _ToRoot) for f in deepspeed.filters):
        deepspeed.addFilter(_ToRoot())
