"""The settings of `gptlab finetune` and `gptlab serve`, declared once, as `RunConfig` declares a run's.

Each field carries its default and, in its metadata, what it accepts: `range` (an interval, gptlab.io.Range),
`most` (an upper bound with its own message, for the "how many" settings), `special` (values allowed outside the
range, e.g. -1 = "the base run's"), `pattern` (a regular expression) and `help`. `resolve` builds a settings object
from keyword values and `--set NAME=VALUE` overrides and checks every declaration; `errors` yields (name, message)
for each field that breaks its declaration. The CLI builds its options from the same fields (cli/posttrain.py), so
a default or a range is written here and nowhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from gptlab import GptlabError
from gptlab.config import DEVICE, SEEDS, parse_overrides
from gptlab.io import BoundaryError, Range, coerce

# Upper bounds of the "how many" settings: far above any real use, so a typo's extra zeros fails at once.
# Also the bounds of the other verbs' options of the same kind (cli/common.py).
MAX_TOKENS = 1_048_576  # new tokens per answer or example: the longest context a config may declare
MAX_BATCH = 65_536  # sequences or prompts per forward pass
MAX_PARALLEL = 1_024  # runs, requests or judge calls at once
MAX_EPOCHS = 10_000


def setting(
    default,
    interval: str | None = None,
    help_: str = "",
    *,
    most: int | None = None,
    special: tuple = (),
    pattern: str | None = None,
    expected: str = "",
    flag: bool = True,
):
    """A field with its declaration: values inside `interval` (and <= `most`), or one of `special`; a string
    matching `pattern` (`expected` says what in words). `flag=False`: not a command-line option. A default of None
    means "unset" and is always accepted."""
    md: dict[str, Any] = {"help": help_, "flag": flag, "special": special, "most": most}
    if interval is not None:
        md["range"] = Range(interval)
    if pattern is not None:
        md.update(pattern=pattern, expected=expected)
    return field(default=default, metadata=md)


def device_setting():
    return setting("auto", pattern=DEVICE, expected="auto, cpu, cuda, cuda:N or mps")


@dataclass(frozen=True)
class FinetuneSettings:
    """What `finetune` trains with (stored in OUT/split.json; a resume must match it)."""

    epochs: int = setting(2, "[1, inf)", most=MAX_EPOCHS)
    lr: float = setting(5e-5, "(0, inf)")
    batch_size: int = setting(8, "[1, inf)", most=MAX_BATCH)
    max_len: int | None = setting(None, "[1, inf)", "max tokens per example (default: model context)", most=MAX_TOKENS)
    val_frac: float = setting(0.1, "[0, 1)")
    test_frac: float = setting(0.1, "[0, 1)")
    seed: int = setting(123, SEEDS)
    weight_decay: float = setting(0.1, "[0, inf)")
    dropout: float = setting(0.0, "[0, 1)", "drop rate while fine-tuning (-1 = the base run's)", special=(-1,))
    patience: int = setting(3, "[0, inf)", "epochs without val improvement before stopping (0 = off)")
    grad_clip: float = setting(0.0, "[0, inf)", "max gradient norm (0 = off)")
    checkpoint_interval: int = setting(0, "[0, inf)", "also checkpoint every N steps (0 = epochs)")
    device: str = device_setting()


@dataclass(frozen=True)
class ServeSettings:
    """How `serve` listens and answers (the API key is not a setting: the CLI reads it from the environment)."""

    host: str = setting("127.0.0.1")
    port: int = setting(8000, "[0, 65535]")
    max_tokens_limit: int = setting(512, "[1, inf)", "largest max_tokens a request may ask for", most=MAX_TOKENS)
    model_name: str | None = setting(None, help_="the model id reported by /v1/models (default: the run folder's name)")
    read_timeout: float = setting(
        30.0,
        "(0, inf)",
        "the longest one read of a request body waits (a stalled "
        "request gets a 408); also how long an idle keep-alive connection stays open",
    )
    max_batch: int = setting(
        8,
        "[1, inf)",
        "decode up to N waiting requests together as one batch (default 8; 1 = "
        "one at a time). A greedy or seeded request's answer does not depend on the batch it "
        "lands in",
        most=MAX_PARALLEL,
    )
    batch_wait_ms: float = setting(
        0.0,
        "[0, 10000]",
        "once the model is free and a request waits, wait up to MS "
        "milliseconds more for others to fill the batch (default 0: take only what is "
        "already waiting)",
    )
    device: str = device_setting()
    max_body_bytes: int = setting(1 << 20, "[1, inf)", flag=False)  # a larger request body gets a 413


def value_type(cls, name: str) -> tuple[type, bool]:
    """(the field's value type, whether None is allowed)."""
    tp = typing.get_type_hints(cls)[name]
    args = typing.get_args(tp)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def declared_range(cls, name: str) -> str:
    """The interval field `name` of `cls` is declared with, e.g. "[1, inf)"."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["range"].text


def errors(obj):
    """(field name, message) for each field of settings `obj` whose value breaks its declaration."""
    for f in dataclasses.fields(obj):
        v, md = getattr(obj, f.name), f.metadata
        if v is None and f.default is None:
            continue
        if v in md.get("special", ()):
            continue
        extra = "".join(f" or {s}" for s in md.get("special", ()))
        if "range" in md and v not in md["range"]:
            yield f.name, f"must be {md['range']}{extra}, got {v!r}"
        elif md.get("most") is not None and v > md["most"]:
            yield f.name, f"must be <= {md['most']:,}, got {v!r}"
        elif "pattern" in md and not (isinstance(v, str) and re.fullmatch(md["pattern"], v)):
            yield f.name, f"expected {md['expected']}, got {v!r}"


def resolve(cls, values: dict | None = None, overrides: list[str] | None = None, where: str = "settings"):
    """A `cls` (FinetuneSettings or ServeSettings) from its defaults, `values` (name -> value) and then `--set
    NAME=VALUE` `overrides`, every value checked against its field's type and declaration. Errors are one line,
    `where: NAME: what was expected`; an unknown name gets the closest valid one suggested."""
    names = [f.name for f in dataclasses.fields(cls)]
    merged = dict(values or {})
    for key, value in parse_overrides(overrides or []).items():
        if isinstance(value, dict):
            raise GptlabError(f"{where}: --set {key}.…: the settings have no sections; use NAME=VALUE")
        merged[key] = value
    kw = {}
    for key, value in merged.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            raise GptlabError(f"{where}: {key}: unknown setting" + (f" (did you mean '{close[0]}'?)" if close else ""))
        tp, optional = value_type(cls, key)
        if value is None and optional:
            kw[key] = None
            continue
        try:
            kw[key] = coerce(value, tp, f"{where}: {key}")
        except BoundaryError as e:
            raise GptlabError(str(e)) from None
    obj = cls(**kw)
    for name, msg in errors(obj):
        raise GptlabError(f"{where}: {name}: {msg}")
    return obj


__all__ = ["FinetuneSettings", "ServeSettings", "resolve", "errors", "setting", "value_type", "declared_range"]
