"""Shared pieces of the verb modules: a subparser with an example epilog, number formatting, and the argparse
types that check a number against its declared interval (or a device name) while parsing, so an out-of-range
value is argparse's one-line error with exit 2."""

from __future__ import annotations

import argparse
import re
import textwrap

from gptlab.config import DEVICE, SEEDS
from gptlab.experiments.specs.experiment import MAX_SEEDS  # noqa: F401 - declared there, with the spec's own seed lists
from gptlab.io import Range
from gptlab.posttrain.settings import MAX_BATCH, MAX_EPOCHS, MAX_PARALLEL, MAX_TOKENS  # noqa: F401 - declared there


def fmt(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def verb_parser(sub, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_,
        description=help_,
        epilog="example:\n" + textwrap.indent(example.strip(), "  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


class Number:
    """`type=` for a numeric option: an int or float inside `interval` ("[1, inf)", "[0, 1)", ...), or one of the
    `special` values (e.g. -1 = "the base run's")."""

    def __init__(self, tp: type, interval: str, special: tuple = (), most: int | None = None):
        self.tp, self.range, self.special, self.most = tp, Range(interval), special, most
        self.__name__ = tp.__name__  # argparse names the type in some messages

    def __call__(self, text: str):
        what = "an integer" if self.tp is int else "a number"
        extra = "".join(f" or {s}" for s in self.special)
        try:
            value = self.tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {self.range}{extra}, got {text!r}") from None
        if value in self.special:
            return value
        if value not in self.range:
            raise argparse.ArgumentTypeError(f"must be {self.range}{extra}, got {text}")
        if self.most is not None and value > self.most:
            raise argparse.ArgumentTypeError(f"must be <= {self.most:,} (the upper bound of this option), got {text}")
        return value

    def __repr__(self) -> str:
        return f"Number({self.tp.__name__}, {self.range.text!r}{'' if self.most is None else f', most={self.most}'})"


COUNT = Number(int, "[0, inf)")  # 0 allowed (usually "off" or "all"): for positions and thresholds, not amounts
POSITIVE = Number(int, "[1, inf)")

# Upper bounds of the "how many" options (an amount of work, memory or processes): each far above any real use, so
# that a typo's extra zeros is argparse's one-line error at once, not hours of work or an allocation that fails late.
MAX_GPUS = 65_536  # GPUs (or processes, nodes) of one run or plan: beyond the largest clusters
MAX_PER_NODE = 1_024  # GPUs or processes on one node
MAX_WORKERS = 1_024  # tokeniser processes
MAX_RETRIES = 100
MAX_MINUTES = 525_600  # a SLURM time limit: one year
MAX_SHARD_TOKENS = 2**31  # tokens per shard: a 4 GiB file


def upto(most: int, lo: int = 1) -> Number:
    """`type=` for an integer option >= lo and <= most (each bound with its own message)."""
    return Number(int, f"[{lo}, inf)", most=most)


FRACTION = Number(float, "[0, 1)")
SEED = Number(int, SEEDS)


def device(text: str) -> str:
    """`type=` for --device: the names train.device accepts."""
    if re.fullmatch(DEVICE, text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
