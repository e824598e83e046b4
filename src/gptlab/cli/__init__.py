"""`gptlab <verb>`: every verb has --help with an example. Errors print one line and exit 2; output to a pipe that
its reader closed (`| head`) stops quietly with exit 141; characters stdout's encoding lacks print as \\xNN escapes.

Each verb group lives in its own module (pretrain, experiments, posttrain, interop): parsing and printing only;
the work is one call into a subpackage, imported when the verb runs so `gptlab --help` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys

from gptlab import GptlabError, __version__
from gptlab.cli import experiments, interop, posttrain, pretrain
from gptlab.cli.common import verb_parser

_parser = verb_parser  # the name the tests and older callers use


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gptlab",
        description="Train GPT-2-class base models from scratch and find out, with honest "
        "statistics, which recipe changes really help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="start here:\n  gptlab prepare --out data/shakespeare\n"
        "  gptlab train --config configs/tiny-cpu.toml\n"
        "  gptlab experiment configs/experiments/seed-interventions.toml",
    )
    p.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in (pretrain, experiments, posttrain, interop):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _tolerant_streams()
    try:
        try:
            return _main(argv)
        except SystemExit:  # argparse's --help, --version or usage error: its output may meet a closed pipe too
            sys.stdout.flush()
            raise
    except BrokenPipeError:  # the reader went away (`gptlab config X | head -1`): stop quietly, as Unix tools do
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool that a closed pipe stopped


def _tolerant_streams() -> None:
    """Output never fails on a character the terminal's encoding lacks (PYTHONIOENCODING=ascii, a C locale): such a
    character is written as a backslash escape (\\xe9) instead of raising UnicodeEncodeError."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream of io's (a test's capture, None)
            pass


def _stdout_to_devnull() -> None:
    """Python's documented recipe for SIGPIPE: point stdout at devnull, so the flush at exit, which would write
    the rest of the buffer to the closed pipe, neither raises nor prints "Exception ignored"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (a test's capture)
        pass


def _main(argv: list[str] | None) -> int:
    from gptlab.cli.console import console

    args = build_parser().parse_args(argv)
    try:
        with console():
            code = args.fn(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the BrokenPipeError handler, not at interpreter exit
        return code
    except GptlabError as e:
        print(f"gptlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a write the file system refused outside gptlab's own checks: still one line
        from gptlab.io import fs_error

        err = fs_error(e)
        if err is None:
            raise
        print(f"gptlab: error: {err}", file=sys.stderr)
        return 2
    except (sqlite3.DatabaseError, json.JSONDecodeError, UnicodeDecodeError) as e:
        # the last resort for a damaged file whose reader did not name it (gptlab's readers raise GptlabError
        # naming the file: io.read_json, the results database): still one line, the parser's own words
        kind = (
            "SQLite"
            if isinstance(e, sqlite3.DatabaseError)
            else "JSON"
            if isinstance(e, json.JSONDecodeError)
            else "UTF-8"
        )
        print(f"gptlab: error: a file it read is damaged ({kind}: {e})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptlab: interrupted (completed checkpoints are kept; re-run with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
