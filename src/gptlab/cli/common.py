"""Shared pieces of the verb modules: a subparser with an example epilog, number formatting, and the argparse
types that check a number against its declared interval (or a device name) while parsing, so an out-of-range
value is argparse's one-line error with exit 2."""

from __future__ import annotations

import argparse
import re
import textwrap

from gptlab.config import DEVICE, SEEDS
from gptlab.io import Range


def fmt(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def verb_parser(sub, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_,
                          epilog="example:\n" + textwrap.indent(example.strip(), "  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


class Number:
    """`type=` for a numeric option: an int or float inside `interval` ("[1, inf)", "[0, 1)", ...), or one of the
    `special` values (e.g. -1 = "the base run's")."""

    def __init__(self, tp: type, interval: str, special: tuple = ()):
        self.tp, self.range, self.special = tp, Range(interval), special
        self.__name__ = tp.__name__  # argparse names the type in some messages

    def __call__(self, text: str):
        what = "an integer" if self.tp is int else "a number"
        extra = "".join(f" or {s}" for s in self.special)
        try:
            value = self.tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {self.range}{extra}, got {text!r}") from None
        if value in self.special or value in self.range:
            return value
        raise argparse.ArgumentTypeError(f"must be {self.range}{extra}, got {text}")

    def __repr__(self) -> str:
        return f"Number({self.tp.__name__}, {self.range.text!r})"


COUNT = Number(int, "[0, inf)")  # 0 allowed (usually "off" or "all")
POSITIVE = Number(int, "[1, inf)")
FRACTION = Number(float, "[0, 1)")
SEED = Number(int, SEEDS)


def device(text: str) -> str:
    """`type=` for --device: the names train.device accepts."""
    if re.fullmatch(DEVICE, text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
