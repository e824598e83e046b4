"""README.md and docs/*.md: every relative link names a real file (and heading, for #anchors), and every
`gptlab ...` command quoted in a code block or inline code names a real verb and that verb's real options,
as the CLI's own argparse parser (gptlab.cli.build_parser) defines them."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from gptlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
ENDS = {"#", "|", "||", "&&", ";", ">", ">>", "2>&1"}
COMMAND_BEFORE = {"-m", "|", "||", "&&", ";"}  # `python -m gptlab`, `torchrun ... -m gptlab`, `a && gptlab`
ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")  # WANDB_MODE=offline gptlab train ...


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = _slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def link_errors(path: Path) -> list[str]:
    """Relative links in `path` whose file (or #anchor in it) does not exist."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = INLINE.sub("", text)
    errors = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            errors.append(f"{path.name}: link {target}: no file {file_part}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            errors.append(f"{path.name}: link {target}: no heading #{anchor} in {dest.name}")
    return errors


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def _tokens(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=False)
    except ValueError:  # an unbalanced quote in prose-like code: fall back to whitespace
        return command.split()


def command_errors(snippet: str, parser: argparse.ArgumentParser | None = None) -> list[str]:
    """Each `gptlab VERB [--option ...]` in `snippet` (one shell line or inline code): unknown verbs and options."""
    parser = parser or build_parser()
    tokens = _tokens(snippet)
    errors = []
    for start, token in enumerate(tokens):
        before = tokens[start - 1] if start else ""
        at_command = not start or before in COMMAND_BEFORE or all(ENV.match(t) for t in tokens[:start])
        if token != "gptlab" or not at_command:  # `sky launch -c gptlab sky.yaml`: a cluster name, not a command
            continue
        current, name = parser, "gptlab"
        for tok in tokens[start + 1 :]:
            if tok in ENDS or tok.startswith("#"):
                break
            tok = tok.strip("[]")
            verbs = _subparsers(current)
            if tok.startswith("--"):
                option = tok.split("=", 1)[0]
                if option not in _options(current):
                    errors.append(f"`{snippet.strip()}`: {name} has no option {option}")
            elif verbs and not tok.startswith("-"):
                if tok not in verbs:
                    errors.append(f"`{snippet.strip()}`: {name} has no verb {tok!r}")
                    break
                current, name = verbs[tok], f"{name} {tok}"
    return errors


def commands(text: str) -> list[str]:
    """Shell lines of fenced code blocks (backslash continuations joined) and inline code spans."""
    out = []
    for block in FENCE.findall(text):
        body = "\n".join(block.splitlines()[1:-1]).replace("\\\n", " ")
        out.extend(body.splitlines())
    out.extend(m.replace("\n", " ") for m in INLINE.findall(FENCE.sub("", text)))
    # four-space indented code blocks after a blank line
    out.extend(re.findall(r"(?<=\n\n)    (\S.*)", text))
    return out


def doc_command_errors(path: Path) -> list[str]:
    parser = build_parser()
    return [f"{path.name}: {e}" for c in commands(path.read_text(encoding="utf-8")) for e in command_errors(c, parser)]


def test_docs_exist_and_readme_is_short():
    files = doc_files()
    assert all(f.exists() for f in files)
    assert len(files) >= 9  # README and the eight topic pages
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 210


def test_every_relative_link_names_a_real_file_and_heading():
    errors = [e for f in doc_files() for e in link_errors(f)]
    assert errors == []


def test_every_quoted_gptlab_command_names_real_verbs_and_options():
    errors = [e for f in doc_files() for e in doc_command_errors(f)]
    assert errors == []


def test_readme_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(readme) if t.startswith("docs/")}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked


def _cell(value) -> str:
    return str(value).replace("|", "\\|")


def _toml(value) -> str:
    """A default as it is written in a config TOML."""
    import json

    return json.dumps(value) if isinstance(value, (bool, str, list)) else repr(value)


def config_table() -> str:
    """docs/config.md's field table, from RunConfig's declarations (defaults and what each field accepts)."""
    from dataclasses import fields, is_dataclass

    from gptlab.config import RunConfig

    rows = ["| field | default | accepts |", "|---|---|---|"]
    cfg = RunConfig()
    for section in fields(RunConfig):
        value = getattr(cfg, section.name)
        members = (
            [(f"{section.name}.{f.name}", f, getattr(value, f.name)) for f in fields(value)]
            if is_dataclass(value)
            else [(section.name, section, value)]
        )
        for name, f, default in members:
            md = f.metadata
            accepts = (
                md["range"].text
                if "range" in md
                else " / ".join(md["choices"])
                if "choices" in md
                else "any of " + ", ".join(md["subset"])
                if "subset" in md
                else md.get("expected", "")
                if "pattern" in md
                else ""
            )
            if md.get("note"):
                accepts += f" ({md['note']})"
            if not accepts and isinstance(default, bool):
                accepts = "true / false"
            if md.get("hashed") is False:
                accepts += "; not in the config hash"
            elif md.get("hashed") == "unless_default":
                accepts += "; in the config hash only when not the default"
            rows.append(f"| `{name}` | `{_cell(_toml(default))}` | {_cell(accepts)} |")
    return "\n".join(rows) + "\n"


def test_config_reference_table_is_generated_from_runconfig():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert config_table() in page, "regenerate: python -c 'import tests.test_docs as t; print(t.config_table())'"


def test_checker_catches_a_broken_link_a_missing_anchor_and_unknown_verbs_and_options(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "real.md").write_text("# A real heading\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](real.md#a-real-heading) [gone](docs/missing.md) [bad anchor](real.md#nope) "
        "[web](https://example.org/x)\n",
        encoding="utf-8",
    )
    errors = link_errors(page)
    assert len(errors) == 2
    assert "docs/missing.md" in errors[0] and "#nope" in errors[1]

    text = (
        "```bash\ngptlab train --config c.toml --no-such-flag 1   # comment --ignored\n"
        "gptlab trian --config c.toml\n```\n"
        "and `gptlab experiment SPEC --until-decided\n[--seeds-per-round R] --max-seedz 3`\n"
    )
    parser = build_parser()
    found = [e for c in commands(text) for e in command_errors(c, parser)]
    assert len(found) == 3
    assert "gptlab train has no option --no-such-flag" in found[0]
    assert "no verb 'trian'" in found[1]
    assert "gptlab experiment has no option --max-seedz" in found[2]
    assert command_errors("torchrun --nproc_per_node 8 -m gptlab train --config x.toml --set a=b", parser) == []
    assert command_errors("gptlab train --set=train.lr=1e-3 --resume", parser) == []
    assert command_errors("sky launch -c gptlab sky.yaml", parser) == []
    assert command_errors("WANDB_MODE=offline gptlab train --bogus", parser) != []
