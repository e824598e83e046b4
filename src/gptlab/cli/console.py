"""Where the library's words reach the user. Nothing below `cli/` prints: library modules log to
`logging.getLogger(__name__)` (all under the "gptlab" logger), and while a verb runs, `console()` renders those
records: INFO as a plain line on stdout (progress: "run baseline-s1 done"), WARNING and above on stderr as
`gptlab: warning: ...`. Outside a verb (a library call from Python) the records go to whatever logging the caller
set up, and Python's last-resort handler shows warnings on stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

LOGGER = "gptlab"


class Console(logging.Handler):
    """Writes each record to the stream current at the time (sys.stdout/sys.stderr looked up per record, so a
    redirected or captured stream is honoured) and flushes, so lines interleave with the children's output."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                stream, line = sys.stderr, f"gptlab: {record.levelname.lower()}: {msg}"
            else:
                stream, line = sys.stdout, msg
            stream.write(line + "\n")
            stream.flush()
        except BrokenPipeError:  # the reader of a pipe went away: cli.main stops quietly with 141
            raise
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console(level: int = logging.INFO) -> Iterator[Console]:
    """Render gptlab's log records on the terminal for the duration of one verb (nested calls, as the tests make,
    install one handler each and remove it again)."""
    log = logging.getLogger(LOGGER)
    handler = Console(level)
    old = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(min(level, log.level) if log.level else level)
    log.propagate = False
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(old[0])
        log.propagate = old[1]
