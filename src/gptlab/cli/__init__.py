"""`gptlab <verb>`: every verb has --help with an example. Errors print one line and exit 2.

Each verb group lives in its own module (pretrain, experiments, posttrain, interop): parsing and printing only;
the work is one call into a subpackage, imported when the verb runs so `gptlab --help` stays fast."""

from __future__ import annotations

import argparse
import sys

from gptlab import GptlabError, __version__
from gptlab.cli import experiments, interop, posttrain, pretrain
from gptlab.cli.common import verb_parser

_parser = verb_parser  # the name the tests and older callers use


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptlab", description="Train GPT-2-class base models from scratch and find out, with honest "
                                "statistics, which recipe changes really help.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="start here:\n  gptlab prepare --out data/shakespeare\n"
                                       "  gptlab train --config configs/tiny-cpu.toml\n"
                                       "  gptlab experiment configs/experiments/seed-interventions.toml")
    p.add_argument("--version", action="version", version=f"gptlab {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for group in (pretrain, experiments, posttrain, interop):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
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
    except KeyboardInterrupt:
        print("gptlab: interrupted (completed checkpoints are kept; re-run with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
