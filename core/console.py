"""A quiet console for long runs: recon's own lines on the terminal, everything else in a log file.

Ray, its worker processes (whose output Ray forwards to the driver), transformers, MLflow and the C++
processes Ray starts all write to the driver's stdout/stderr. :func:`quiet_console` points file
descriptors 1 and 2 (and Python's ``sys.stdout``/``sys.stderr`` and logging handlers) at a log file
for the duration of a run and returns a ``say`` function that still writes to the terminal. So a
run shows its progress and summary, nothing else, and the log file named at the start holds every
line a reader may need later, including the tracebacks of expected worker teardown.
``verbose=True`` leaves everything on the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

Say = Callable[[str], None]
_console = None  # where say() writes while a quiet console is open (else sys.stdout)


def say(message: str) -> None:
    """Print a line on the terminal, also while a quiet console sends everything else to its log.

    A module function (pickled by reference), so Tune callbacks that hold it can be checkpointed.
    """
    stream = _console or sys.stdout
    stream.write(message + "\n")
    stream.flush()


@contextlib.contextmanager
def quiet_console(log_dir: Path, name: str, *, verbose: bool = False) -> Iterator[tuple[Say, Path | None]]:
    """``(say, log_path)``: ``say`` prints on the terminal; all other output goes to ``log_path``.

    A command refused before it computed anything (:class:`recon.core.errors.Refused`) leaves no log
    behind: its file and the folders made for it are removed (the refusal itself is on the terminal).
    """
    global _console
    if verbose:
        yield say, None
        return
    made = [p for p in (log_dir, *log_dir.parents) if not p.exists()]  # deepest first
    refused = False
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    try:  # the terminal: a duplicate of fd 1, or whatever replaced sys.stdout (a test's capture)
        console = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        owns_console = True
    except (AttributeError, OSError, ValueError):
        console, owns_console = sys.stdout, False
    log = open(log_path, "a", buffering=1, encoding="utf-8")
    saved_streams = sys.stdout, sys.stderr
    retargeted: list[tuple[logging.StreamHandler, object]] = []
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout = sys.stderr = log
        loggers = [logging.getLogger()] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
        for logger in loggers:
            for handler in getattr(logger, "handlers", []):
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
                        and handler.stream in saved_streams:
                    retargeted.append((handler, handler.stream))
                    handler.setStream(log)
        _console = console
        try:
            yield say, log_path
        except BaseException as exc:
            from recon.core.errors import Refused

            refused = isinstance(exc, Refused)
            raise
    finally:
        _console = None
        for handler, stream in retargeted:
            handler.setStream(stream)
        sys.stdout, sys.stderr = saved_streams
        log.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        log.close()
        if owns_console:
            console.close()
        if refused:
            log_path.unlink(missing_ok=True)
            for folder in made:
                try:
                    folder.rmdir()
                except OSError:  # not empty: something else lives there
                    break


__all__ = ["quiet_console", "say", "Say"]
