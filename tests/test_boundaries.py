"""Validation at every boundary, one mechanism: each numeric config field declares an interval (config.ranged),
each numeric CLI option an argparse type with one (cli/common.Number), each request number one (serve/api.in_range).

The fields and options are enumerated from the dataclasses and the argparse parser, so a new one is covered (and
must declare its range) without touching this file. The properties: a drawn value gives either a one-line error
with exit 2 or a result that makes sense (a model with parameters, at least one step, a plan); never a traceback,
never exit 0 on nonsense. Runs in seconds: config values are validated and the model and its optimizers built on
the meta device; a handful of in-range values train for 2 steps; CLI values are parsed (plan is run in full)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import re
import typing

import pytest
import torch
from conftest import tiny_overrides
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab import GptlabError
from gptlab.cli import build_parser, main
from gptlab.cli.common import Number
from gptlab.config import SECTIONS, load_config
from gptlab.io import Range, first_line

CONFIG_FIELDS = [
    (f"{section}.{f.name}", typing.get_type_hints(cls)[f.name], f.metadata)
    for section, cls in SECTIONS.items()
    for f in dataclasses.fields(cls)
    if typing.get_type_hints(cls)[f.name] in (int, float)
]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


VERBS = _subparsers(build_parser())
CLI_OPTIONS = [
    (verb, a)
    for verb, p in VERBS.items()
    for a in p._actions
    if isinstance(a.type, Number)
    or a.type in (int, float)
    or (isinstance(a.default, (int, float)) and not isinstance(a.default, bool))
]


def _edges(tp: type, r: Range, special: tuple = ()) -> list:
    """Values at and just beyond the interval's ends, plus the usual suspects (0, -1, 2**63, nan, inf, ...)."""
    lo, hi, _, _ = r.bounds
    ends = [b for b in (lo, hi) if math.isfinite(b)]
    out = [0, 1, -1, 2, 2**31, 2**63, 2**64 + 1, 10**30, -(2**64), *special]
    out += [b + d for b in ends for d in (-1, 0, 1)]
    if tp is float:
        out += [math.nan, math.inf, -math.inf, 1e-300, -1e-300, 0.5, 1e300]
        out += [b + d for b in ends for d in (-1e-9, 1e-9)]
    return [
        tp(v) if tp is int and isinstance(v, float) and v.is_integer() else v
        for v in out
        if tp is float or isinstance(v, int) or (isinstance(v, float) and v.is_integer())
    ]


def _values(tp: type, r: Range, special: tuple = ()):
    some = st.integers(-10, 200) if tp is int else st.floats(allow_nan=True, allow_infinity=True)
    return st.one_of(st.sampled_from(_edges(tp, r, special)), some)


def _literal(v) -> str:
    """A TOML literal (what a user types after --set)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return repr(v)


def _run_cli(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of `gptlab ARGV` in this process; any other exception is a traceback: the test fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, err.getvalue()


def _one_line_error(rc: int, stderr: str, pattern: str = "") -> None:
    """Exit 2 and a last line `gptlab[ VERB]: error: ...` matching `pattern` (argparse prints its usage above)."""
    assert rc == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.match(r"gptlab( \S+)?: error: ", last) and re.search(pattern, last), stderr


# ---- config fields --------------------------------------------------------------------------


def test_every_numeric_config_field_declares_a_range():
    assert len(CONFIG_FIELDS) >= 34
    assert [name for name, _, md in CONFIG_FIELDS if not isinstance(md.get("range"), Range)] == []


@pytest.mark.parametrize(
    "override,match",
    [
        ("model.n_heads=0", r"model\.n_heads: must be in \[1, "),  # was ZeroDivisionError
        ("model.emb_dim=0", r"model\.emb_dim: must be in \[1, "),  # was a 0-parameter model trained, exit 0
        ("model.emb_dim=100", r"model\.emb_dim: must be divisible by model\.n_heads"),
        ('train.device="gpu7"', r"train\.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu7'"),
        ("train.beta1=1.0", r"train\.beta1: must be in \[0, 1\), got 1\.0"),  # was ValueError from AdamW
        ("train.beta2=-0.1", r"train\.beta2: must be in \[0, 1\)"),
        ("train.weight_decay=-0.1", r"train\.weight_decay: must be >= 0"),  # was accepted
        ("train.lr=inf", r"train\.lr: must be > 0, got inf"),  # was accepted
        ("train.eps=0", r"train\.eps: must be > 0"),
        ("train.log_interval=0", r"train\.log_interval: must be >= 1"),  # was ZeroDivisionError in the log
        ("train.seed=-1", r"train\.seed: must be in \[0, 4294967295\]"),  # was ValueError from numpy
        ("model.vocab_size=-2", r"model\.vocab_size: must be in \[1, 65536\] \(token shards are uint16\)"),
        ('interventions=["tf32:enabled=nope"]', r"'tf32:enabled=nope': enabled: expected true or false"),
        ('interventions=["weight_decay:matrices_only=maybe"]', r"matrices_only: expected true or false"),
        ('interventions=["grad_clip:max_norm=-1"]', r"train\.grad_clip: must be >= 0 \(0 = off\)"),
    ],
)
def test_known_bad_values_are_one_line_errors(override, match):
    with pytest.raises(GptlabError, match=match) as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)
    _one_line_error(*_run_cli(["config", "--set", override]), match)


def _build(cfg) -> int:
    """Build the model and its optimizers on the meta device (no memory); the parameter count."""
    from gptlab.model import GPTModel, count_params
    from gptlab.train.flops import token_budget
    from gptlab.train.optim import build_optimizers

    with torch.device("meta"):
        model = GPTModel(cfg.model)
    build_optimizers(model, cfg, torch.device("meta"))
    n = count_params(model)
    assert token_budget(cfg, n) >= 0  # a budget under one step trains one step (pretrain: max(1, ...))
    return n


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_config_field_values(data):
    name, tp, md = data.draw(st.sampled_from(CONFIG_FIELDS), label="field")
    value = data.draw(_values(tp, md["range"]), label="value")
    override = f"{name}={_literal(value)}"
    base = ["model.preset=nano"] if not name.startswith("model.") else ["model.n_layers=2"]
    try:
        cfg = load_config(None, base + [override])
    except GptlabError as e:
        assert "\n" not in str(e) and name in str(e), str(e)
        assert tp(value) not in md["range"] or "divisible by" in str(e), str(e)  # out of range, or a cross-field rule
        return
    section, key = name.split(".")
    assert getattr(getattr(cfg, section), key) in md["range"]
    assert _build(cfg) > 0  # a model with parameters and an optimizer that accepts its settings


def _small_in_range(tp: type, r: Range):
    """In-range values a 2-step tiny run can afford."""
    lo, hi, lo_closed, _ = r.bounds
    if tp is int:
        start = lo if lo_closed else lo + 1
        return st.integers(start, min(start + 3, hi))
    top = min(hi, 1.0)
    return st.floats(lo, top, exclude_min=not lo_closed, exclude_max=top == hi and not r.bounds[3])


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_property_in_range_values_train_two_steps(small_data, tmp_path_factory, data):
    name, tp, md = data.draw(st.sampled_from(CONFIG_FIELDS), label="field")
    value = data.draw(_small_in_range(tp, md["range"]), label="value")
    sets = tiny_overrides(small_data, **{name: value})
    argv = ["train", "--run-dir", str(tmp_path_factory.mktemp("run")), "--quiet", "--stop-after", "2"]
    rc, err = _run_cli(argv + [x for s in sets for x in ("--set", s)])
    if rc:
        _one_line_error(rc, err, "")
    assert "Traceback" not in err


# ---- CLI options ----------------------------------------------------------------------------


def test_every_numeric_cli_option_declares_a_range():
    assert len(VERBS) >= 15 and len(CLI_OPTIONS) >= 45
    assert [f"{verb} {a.option_strings}" for verb, a in CLI_OPTIONS if not isinstance(a.type, Number)] == []


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """The smallest argv the parser accepts: its positionals and required options, with placeholder values."""
    argv: list[str] = []
    for a in parser._actions:
        if not a.option_strings and a.nargs not in ("?", "*"):
            argv += ["configs/tiny-cpu.toml"] * (2 if a.nargs == "+" else 1)
        elif a.option_strings and a.required:
            argv += [a.option_strings[-1], "x"]
    return argv


@pytest.mark.parametrize(
    "argv,match",
    [
        ("plan configs/tiny-cpu.toml --gpus 0", "argument --gpus: must be >= 1, got 0"),
        ("plan configs/tiny-cpu.toml --mfu 0", "argument --mfu: must be in (0, 1], got 0"),
        ("plan configs/tiny-cpu.toml --gpu-hours -5", "argument --gpu-hours: must be in (0, 1e12]"),
        ("plan configs/tiny-cpu.toml --gpu-hours 1e300", "argument --gpu-hours: must be in (0, 1e12]"),  # was inf FLOPs
        ("generate r --prompt x --max-new-tokens -1", "argument --max-new-tokens: must be >= 1"),
        ("generate r --prompt x --seed 99999999999999999999", "argument --seed: must be in [0, 4294967295]"),
        ("generate r --prompt x --temperature nan", "argument --temperature: must be >= 0, got nan"),
        ("serve r --port 70000", "argument --port: must be in [0, 65535]"),
        ("serve r --max-tokens-limit 0", "argument --max-tokens-limit: must be >= 1"),
        ("serve r --read-timeout 0", "argument --read-timeout: must be > 0"),
        ("serve r --max-batch 0", "argument --max-batch: must be >= 1"),
        ("serve r --batch-wait-ms 20000", "argument --batch-wait-ms: must be in [0, 10000], got 20000"),
        ("eval r --device gpu7", "argument --device: expected auto, cpu, cuda, cuda:N or mps"),
        ("finetune r --data d --out o --dropout -0.5", "argument --dropout: must be in [0, 1) or -1, got -0.5"),
        ("experiment s --parallel 0", "argument --parallel: must be >= 1"),
    ],
)
def test_out_of_range_options_are_argparse_errors(argv, match):
    rc, err = _run_cli(argv.split())
    _one_line_error(rc, err, re.escape(match))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_cli_option_values(data):
    verb, action = data.draw(st.sampled_from(CLI_OPTIONS), label="option")
    num: Number = action.type
    value = data.draw(_values(num.tp, num.range, num.special), label="value")
    text = (
        _literal(value) if not (isinstance(value, float) and value.is_integer() and num.tp is int) else str(int(value))
    )
    argv = [verb, *_required(VERBS[verb]), action.option_strings[-1], text]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            _one_line_error(e.code, err.getvalue(), re.escape(f"argument {'/'.join(action.option_strings)}"))
            return
    parsed = getattr(args, action.dest)
    assert parsed in num.range or parsed in num.special, (argv, parsed)
    if verb == "plan":  # cheap enough to run whole: every accepted number must give a plan or one line
        rc, stderr = _run_cli(argv)
        if rc:
            _one_line_error(rc, stderr)


def test_first_line_of_an_exception_is_its_first_non_empty_line_or_its_type():
    assert first_line(ValueError("\n  header too large  \nTraceback (most recent call last):")) == "header too large"
    assert first_line(OSError()) == "OSError" and first_line(RuntimeError("  \n ")) == "RuntimeError"
    assert first_line(RuntimeError("x" * 500 + "\ny"), 200) == "x" * 200
