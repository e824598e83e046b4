"""The package's layering: lower layers never import higher ones, and no two modules import each other.

Every `import gptlab...` / `from gptlab... import` in src/gptlab is read with `ast` (module level and inside
functions alike, since a lazy import is still a dependency; only `if TYPE_CHECKING:` blocks, which never run, are
left out), mapped to its layer, and checked."""

from __future__ import annotations

import ast
from pathlib import Path

import gptlab

SRC = Path(gptlab.__file__).parent

# lowest first; a module may import its own layer and those before it
LAYERS = [
    {"gptlab", "gptlab.io", "gptlab.interventions"},
    {"gptlab.config"},
    {"gptlab.model", "gptlab.data"},
    {"gptlab.train"},
    {"gptlab.experiments", "gptlab.posttrain", "gptlab.interop", "gptlab.plan"},
    {"gptlab.cli", "gptlab.__main__"},
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in (2, 1):
        key = ".".join(parts[:n])
        for i, members in enumerate(LAYERS):
            if key in members:
                return i
    raise AssertionError(f"{module}: not assigned to a layer in tests/test_layers.py")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(path: Path) -> set[str]:
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gptlab"):
            assert node.level == 0, f"{path}: relative import (use absolute gptlab.* imports)"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names
                       if (SRC.parent / node.module.replace(".", "/") / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("gptlab"))
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def test_lower_layers_never_import_higher_ones():
    wrong = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
             for m, deps in graph().items() for d in deps
             if layer_of(d) > layer_of(m) and not (m == "gptlab" and d.startswith("gptlab."))]
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_import_each_other():
    g = graph()
    pairs = sorted({tuple(sorted((a, b))) for a, deps in g.items() for b in deps if b != a and a in g.get(b, ())})
    assert not pairs, pairs


def test_the_checker_sees_lazy_imports_and_skips_type_checking_blocks(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gptlab.config import RunConfig\n"
                   "def f():\n    from gptlab.cli import main\n")
    assert imports(src) == {"gptlab.cli"} and layer_of("gptlab.cli") > layer_of("gptlab.train")
