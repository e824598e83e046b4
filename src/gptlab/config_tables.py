"""The raw tables a config is resolved from: TOML files (with their `base = "other.toml"` chain), dotted
`--set section.key=value` overrides, and the merge of one table over another. Typing and checking the merged
table is config.py's job."""

from __future__ import annotations

import tomllib
from pathlib import Path

from gptlab import GptlabError
from gptlab.io import parse_value


def read_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise GptlabError(f"{p}: config file not found")
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise GptlabError(f"{p}: malformed TOML: {e}") from None
    except UnicodeDecodeError:
        raise GptlabError(f"{p}: not UTF-8 text") from None


def read_config_toml(path: str | Path, _seen: tuple = ()) -> dict:
    """A config file; `base = "other.toml"` (relative to the file) is read first and this file merged over it."""
    p = Path(path).resolve()
    if p in _seen:
        raise GptlabError(f"{path}: base: circular inheritance ({' -> '.join(str(x) for x in _seen + (p,))})")
    raw = read_toml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise GptlabError(f"{path}: base: expected a path to another config TOML")
    bp = Path(path).parent / base
    if not bp.is_file():
        raise GptlabError(f"{path}: base: {base} not found (looked for {bp})")
    return deep_merge(read_config_toml(bp, _seen + (p,)), raw)


def parse_overrides(items: list[str]) -> dict:
    """['train.lr=3e-4', 'model.preset=tiny'] -> nested dict."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise GptlabError(f"--set {item}: expected section.key=value")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise GptlabError(f"--set {item}: {p} is set twice")
        node[parts[-1]] = parse_value(text.strip())
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
