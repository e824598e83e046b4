"""Shared pieces of the verb modules: a subparser with an example epilog, number formatting."""

from __future__ import annotations

import argparse
import textwrap


def fmt(x, nd=4):
    return "-" if x is None else f"{x:.{nd}f}"


def verb_parser(sub, name: str, help_: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_,
                          epilog="example:\n" + textwrap.indent(example.strip(), "  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
