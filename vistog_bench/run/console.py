"""Third-party output during a sweep: what lmms-eval, loguru, transformers, pycocoevalcap / pycocotools and their
Java subprocess print goes to the run's log (redirected at the file-descriptor level, so subprocesses are caught
too); tqdm's progress bars stay on the terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path


class _Redirect(io.TextIOBase):
    """A stand-in for `sys.<name>` during a sweep. Libraries imported inside may keep it (nltk keeps sys.stderr):
    once `detach`ed, it writes to whatever `sys.<name>` is at that moment, never to the closed run log."""

    name = ""  # "stdout" | "stderr"

    def __init__(self) -> None:
        self.detached = False

    def detach(self) -> None:
        self.detached = True

    def now(self):
        """The stream a detached stand-in writes to: today's `sys.<name>` (the interpreter's own if that is us)."""
        current = getattr(sys, self.name)
        return current if current is not self else getattr(sys, f"__{self.name}__")


class ProgressSplitter(_Redirect):
    """`sys.stderr` while third-party code runs: tqdm's redraws (a write that starts with a carriage return, and the
    newline that closes a bar) go to the terminal, every other write (warnings, prints to stderr) to the run log."""

    name = "stderr"

    def __init__(self, terminal, log) -> None:
        super().__init__()
        self.terminal, self.log, self._in_bar = terminal, log, False

    def write(self, text: str) -> int:
        if self.detached:
            return self.now().write(text)
        if text.startswith("\r") or (self._in_bar and text == "\n"):
            self.terminal.write(text)
            self.terminal.flush()
            self._in_bar = text != "\n"
        elif text:
            self.log.write(text)
        return len(text)

    def flush(self) -> None:
        if self.detached:
            self.now().flush()
            return
        self.terminal.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.now().isatty() if self.detached else self.terminal.isatty()

    def fileno(self) -> int:
        return self.now().fileno() if self.detached else self.terminal.fileno()


class LogStream(_Redirect):
    """`sys.stdout` while third-party code runs: every write goes to the run log."""

    name = "stdout"

    def __init__(self, log) -> None:
        super().__init__()
        self.log = log

    def write(self, text: str) -> int:
        return (self.now() if self.detached else self.log).write(text)

    def flush(self) -> None:
        (self.now() if self.detached else self.log).flush()

    def fileno(self) -> int:
        return (self.now() if self.detached else self.log).fileno()


@contextlib.contextmanager
def third_party_output_to(log_path: Path):
    """Send what libraries print to `log_path`: file descriptors 1 and 2 (Java under pycocoevalcap, C libraries,
    handlers bound to the process's stderr) and Python's `sys.stdout`; `sys.stderr` keeps tqdm bars on the terminal.
    loguru (lmms-eval's logger) writes to the log at INFO while inside."""
    from loguru import logger

    from .tasks import quiet_lmms_eval

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log = open(log_path, "a", encoding="utf-8", buffering=1)
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8", buffering=1)
    old_streams = sys.stdout, sys.stderr
    # libraries imported inside may keep these objects (nltk keeps sys.stderr): detached, they write to the streams
    # of the moment, never to the closed log
    streams = LogStream(log), ProgressSplitter(terminal, log)
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        sys.stdout, sys.stderr = streams
        logger.remove()
        logger.add(log, level="INFO")
        yield
    finally:
        sys.stdout, sys.stderr = old_streams
        for stream in streams:
            stream.detach()
        log.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()
        log.close()
        quiet_lmms_eval()  # loguru back to the console, warnings only


__all__ = ["LogStream", "ProgressSplitter", "third_party_output_to"]
