"""The package's layering: lower layers never import higher ones, and the modules' imports form no cycle.

Every `import gptlab...` / `from gptlab... import` in src/gptlab is read with `ast` (module level and inside
functions alike, since a lazy import is still a dependency; only `if TYPE_CHECKING:` blocks, which never run, are
left out), mapped to its layer, and checked. `from gptlab import train` counts as importing gptlab.train (a name
that is a module or subpackage is imported), and so does `importlib.import_module("gptlab.train")` (or
`import_module(...)`, `__import__(...)`) with a string literal. Cycles of any length are found (strongly connected
components of the module graph), not only two modules importing each other. Each rule has a self-test on a small
package written to tmp_path with that violation.

Inside the top layer, the rooms (experiments, posttrain, interop, plan) meet only through declared doors (`DOORS`:
the names one room may import from another), and some modules must stay light: importing them in a fresh
process does not load the modules listed in `LIGHT` (serving, generation and fine-tuning never load the
pretraining loop or the loggers; reports never load lm-eval)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gptlab

SRC = Path(gptlab.__file__).parent

# lowest first; a module may import its own layer and those before it
LAYERS = [
    {"gptlab", "gptlab.io", "gptlab.interventions"},
    {
        "gptlab.config",
        "gptlab.config_tables",
        "gptlab.data",
    },  # config.resolve reads a corpus vocabulary from prepared data
    {"gptlab.model"},
    {"gptlab.train"},
    {"gptlab.experiments", "gptlab.posttrain", "gptlab.interop", "gptlab.plan"},
    {"gptlab.cli", "gptlab.__main__"},
]

ROOMS = ("gptlab.experiments", "gptlab.posttrain", "gptlab.interop", "gptlab.plan")
DOORS = {  # (room, other room) -> the only (module, name) the room imports from the other
    ("gptlab.posttrain", "gptlab.experiments"): {("gptlab.experiments.results", "record_judge_scores")},
    ("gptlab.experiments", "gptlab.interop"): {("gptlab.interop.downstream", "report_columns")},
    ("gptlab.experiments", "gptlab.plan"): {("gptlab.plan", "plan"), ("gptlab.plan", "PRICE_PER_GPU_HOUR")},
}
PRETRAINING = ("gptlab.train.pretrain", "gptlab.train.loggers")
LIGHT = {  # module -> modules that importing it must not load
    "gptlab.posttrain.serve.app": PRETRAINING,
    "gptlab.posttrain.serve.server": PRETRAINING,
    "gptlab.posttrain.generate": PRETRAINING,
    "gptlab.posttrain.finetune": PRETRAINING,
    "gptlab.posttrain.judge": PRETRAINING + ("gptlab.experiments.report", "gptlab.experiments.run.runner"),
    "gptlab.experiments.report": ("gptlab.interop.lm_eval", "gptlab.interop.hf", "lm_eval", "gptlab.train"),
}

# inside experiments/, lowest first: a module may import its own layer and those before it
EXPERIMENT_LAYERS = ["specs", "results", "analysis", "report", "run"]

IMPORT_CALLS = {"import_module", "__import__"}  # importlib.import_module(...), import_module(...), __import__(...)


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in (2, 1):
        key = ".".join(parts[:n])
        for i, members in enumerate(LAYERS):
            if key in members:
                return i
    raise AssertionError(f"{module}: not assigned to a layer in tests/test_layers.py")


def module_name(path: Path, src: Path = SRC) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str, root: Path) -> bool:
    """Whether `dotted` (gptlab.x.y) is a module or a package under `root` (the folder that holds gptlab/)."""
    base = root / dotted.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _import_call_target(node: ast.AST) -> str | None:
    """ "gptlab.x" for import_module("gptlab.x") / importlib.import_module("gptlab.x") / __import__("gptlab.x")."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    arg = node.args[0]
    if (
        name in IMPORT_CALLS
        and isinstance(arg, ast.Constant)
        and isinstance(arg.value, str)
        and arg.value.split(".")[0] == "gptlab"
    ):
        return arg.value
    return None


def imports(path: Path, root: Path = SRC.parent) -> set[str]:
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptlab":
            assert node.level == 0, f"{path}: relative import (use absolute gptlab.* imports)"
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if is_module(f"{node.module}.{a.name}", root))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "gptlab")
        elif target := _import_call_target(node):
            out.add(target)
    return out


def graph(src: Path = SRC) -> dict[str, set[str]]:
    return {module_name(p, src): imports(p, src.parent) for p in src.rglob("*.py")}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
        for m, deps in sorted(g.items())
        for d in sorted(deps)
        if layer_of(d) > layer_of(m) and not (m == "gptlab" and d.startswith("gptlab."))
    ]


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One import cycle per strongly connected component of more than one module (Tarjan), as [a, b, ..., a]."""
    edges = {m: sorted(d for d in deps if d in g and d != m) for m, deps in g.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)

    out = []
    for comp in sorted(components):  # a shortest way from the component's first module back to itself
        members, start = set(comp), comp[0]
        paths = {w: [start, w] for w in edges[start] if w in members}
        frontier = list(paths)
        while start not in paths:
            nxt = []
            for v in frontier:
                for w in edges[v]:
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
        out.append(paths[start])
    return out


def test_lower_layers_never_import_higher_ones():
    wrong = upward_imports(graph())
    assert not wrong, "\n".join(wrong)


def experiment_layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["gptlab", "experiments"] or len(parts) < 3:
        return None
    assert parts[2] in EXPERIMENT_LAYERS, f"{module}: not assigned to a layer of experiments/ in tests/test_layers.py"
    return EXPERIMENT_LAYERS.index(parts[2])


def upward_inside_experiments(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, deps in sorted(g.items()):
        lm = experiment_layer(m)
        for d in sorted(deps):
            ld = experiment_layer(d)
            if lm is not None and ld is not None and ld > lm:
                out.append(f"{m} ({EXPERIMENT_LAYERS[lm]}) imports {d} ({EXPERIMENT_LAYERS[ld]})")
    return out


def test_experiments_layers_spec_results_analysis_report_run():
    wrong = upward_inside_experiments(graph())
    assert not wrong, "\n".join(wrong)


def test_the_experiments_order_check_fails_on_a_report_that_imports_the_runner(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "experiments/report/render.py": "from gptlab.experiments.run.runner import run_experiment\n",
            "experiments/run/runner.py": "from gptlab.experiments.report import render\n",
            "experiments/analysis/stats.py": "def f():\n    from gptlab.experiments import results\n",
            "experiments/results.py": "",
        },
    )
    assert upward_inside_experiments(graph(pkg)) == [
        "gptlab.experiments.report.render (report) imports gptlab.experiments.run.runner (run)"
    ]


# Every phase of an experiment (the matrix, a tuned experiment's sweep and tuned matrix, each sequential round, a
# sweep) goes through one pipeline (experiments/run/pipeline.py): it alone checks planned runs against the recorded
# ones and runs them, so no phase can skip the stale-run check or run a matrix its own way.
PIPELINE_ONLY = {
    ("gptlab.experiments.run.changes", "check_changed"): "gptlab.experiments.run.pipeline",
    ("gptlab.experiments.run.matrix", "run_matrix"): "gptlab.experiments.run.pipeline",
}


def _reaches(mod: str, name: str | None, module: str, func: str) -> bool:
    """An import (module, name) that reaches module.func: `from module import func`, `import module` or
    `from parent import module`."""
    parent, leaf = module.rsplit(".", 1)
    return (mod == module and name in (func, None)) or (mod, name) == (parent, leaf)


def module_imports(src: Path = SRC):
    """(module, imported module, name) for every module under `src` and each of its imported_names, in order."""
    for p in sorted(src.rglob("*.py")):
        for mod, name in sorted(imported_names(p), key=str):
            yield module_name(p, src), mod, name


def pipeline_bypassed(src: Path = SRC) -> list[str]:
    return [
        f"{here} imports {m}.{f} (only {owner} may)"
        for here, mod, name in module_imports(src)
        for (m, f), owner in PIPELINE_ONLY.items()
        if here != owner and _reaches(mod, name, m, f)
    ]


def test_every_phase_plans_checks_and_runs_through_the_pipeline():
    wrong = pipeline_bypassed()
    assert not wrong, "\n".join(wrong)


def test_the_pipeline_check_sees_a_phase_that_runs_its_own_matrix(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "experiments/run/rounds.py": "def f():\n    from gptlab.experiments.run.matrix import run_matrix\n",
            "experiments/run/runner.py": "from gptlab.experiments.run import changes\n",
            "experiments/run/pipeline.py": "from gptlab.experiments.run.changes import check_changed\n",
        },
    )
    assert pipeline_bypassed(pkg) == [
        "gptlab.experiments.run.rounds imports gptlab.experiments.run.matrix.run_matrix (only "
        "gptlab.experiments.run.pipeline may)",
        "gptlab.experiments.run.runner imports gptlab.experiments.run.changes.check_changed (only "
        "gptlab.experiments.run.pipeline may)",
    ]


def test_the_modules_imports_form_no_cycle():
    found = cycles(graph())
    assert not found, "\n".join(" -> ".join(c) for c in found)


def test_the_checker_sees_lazy_imports_and_skips_type_checking_blocks(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gptlab.config import RunConfig\n"
        "def f():\n    from gptlab.cli import main\n"
    )
    assert imports(src) == {"gptlab.cli"} and layer_of("gptlab.cli") > layer_of("gptlab.train")


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    """root/gptlab with the given modules (path relative to gptlab/: source); every folder gets an __init__.py."""
    pkg = root / "gptlab"
    for rel, text in {"__init__.py": "", **files}.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in [p for p in path.parents if p != root and pkg in (p, *p.parents)]:
            (parent / "__init__.py").touch()
        path.write_text(text)
    return pkg


def test_the_checker_sees_from_gptlab_import_subpackage(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "io.py": "from gptlab import GptlabError, train\n",  # a name and a subpackage
            "config.py": "def f():\n    from gptlab import cli\n",
            "train/__init__.py": "",
            "cli/__init__.py": "",
            "train/pretrain.py": "from gptlab.train import loop\n",
            "train/loop.py": "from gptlab import config\n",
        },
    )
    g = graph(pkg)
    assert g["gptlab.io"] == {"gptlab", "gptlab.train"} and g["gptlab.train.pretrain"] == {
        "gptlab.train",
        "gptlab.train.loop",
    }
    assert upward_imports(g) == [
        "gptlab.config (layer 1) imports gptlab.cli (layer 5)",
        "gptlab.io (layer 0) imports gptlab.train (layer 3)",
    ]


def test_the_checker_sees_import_module_with_a_literal(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "io.py": "import importlib\n\ndef f():\n    return importlib.import_module('gptlab.train.pretrain')\n",
            "config.py": "from importlib import import_module\nCLI = import_module('gptlab.cli')\n",
            "data/__init__.py": "m = __import__('gptlab.experiments')\nn = __import__(NAME)\nimport_module('numpy')\n",
            "train/pretrain.py": "",
            "cli/__init__.py": "",
            "experiments/__init__.py": "",
        },
    )
    g = graph(pkg)
    assert g["gptlab.io"] == {"gptlab.train.pretrain"} and g["gptlab.data"] == {"gptlab.experiments"}
    assert upward_imports(g) == [
        "gptlab.config (layer 1) imports gptlab.cli (layer 5)",
        "gptlab.data (layer 1) imports gptlab.experiments (layer 4)",
        "gptlab.io (layer 0) imports gptlab.train.pretrain (layer 3)",
    ]


def test_the_checker_finds_cycles_of_any_length(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {  # all in one layer, so only the cycle check can see them
            "train/a.py": "from gptlab.train import b\n",
            "train/b.py": "import gptlab.train.c\n",
            "train/c.py": "def f():\n    from gptlab.train.a import x\n",
            "train/d.py": "import gptlab.train.e\n",
            "train/e.py": "import gptlab.train.d\n",
            "train/f.py": "import gptlab.train.a\nimport gptlab.train.f\n",
        },
    )  # f leads into a cycle, imports itself
    assert cycles(graph(pkg)) == [
        ["gptlab.train.a", "gptlab.train.b", "gptlab.train.c", "gptlab.train.a"],
        ["gptlab.train.d", "gptlab.train.e", "gptlab.train.d"],
    ]


# ---- rooms and their doors ------------------------------------------------------------------------------


def room_of(module: str) -> str | None:
    return next((r for r in ROOMS if module == r or module.startswith(r + ".")), None)


def imported_names(path: Path) -> set[tuple[str, str | None]]:
    """(module, name) for each `from module import name`; (module, None) for `import module` and import_module."""
    out: set[tuple[str, str | None]] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptlab":
            out.update((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.update((a.name, None) for a in node.names if a.name.split(".")[0] == "gptlab")
        elif target := _import_call_target(node):
            out.add((target, None))
    return out


def doors_broken(src: Path = SRC) -> list[str]:
    wrong = []
    for me, mod, name in module_imports(src):
        here, there = room_of(me), room_of(mod if name is None else f"{mod}.{name}")
        if here and there and there != here and (mod, name) not in DOORS.get((here, there), set()):
            wrong.append(f"{me} imports {mod}{'' if name is None else f'.{name}'}")
    return wrong


def test_rooms_meet_only_through_their_doors():
    wrong = doors_broken()
    assert not wrong, "\n".join(wrong)


def test_the_door_check_sees_a_wide_import(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "posttrain/judge.py": "from gptlab.experiments.results import ResultsDB, record_judge_scores\n",
            "experiments/results.py": "",
            "experiments/report.py": "from gptlab.interop import lm_eval\n"
            "from gptlab.interop.downstream import report_columns\n",
            "interop/lm_eval.py": "",
            "interop/downstream.py": "",
            "plan.py": "import gptlab.posttrain\n",
        },
    )
    assert doors_broken(pkg) == [
        "gptlab.experiments.report imports gptlab.interop.lm_eval",
        "gptlab.plan imports gptlab.posttrain",
        "gptlab.posttrain.judge imports gptlab.experiments.results.ResultsDB",
    ]


# ---- what an import loads -------------------------------------------------------------------------------


def loaded_by(module: str, root: Path = SRC.parent) -> set[str]:
    """The modules a fresh Python process has loaded after `import module`, with `root` first on its path."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", sorted(LIGHT))
def test_light_modules_do_not_load_what_they_do_not_use(module):
    heavy = sorted(set(LIGHT[module]) & loaded_by(module))
    assert not heavy, f"importing {module} loads {', '.join(heavy)}"


def test_the_load_check_sees_a_package_init_that_loads_everything(tmp_path):
    _fake_package(
        tmp_path,
        {
            "train/__init__.py": "from gptlab.train.pretrain import train\n",
            "train/pretrain.py": "train = 1\n",
            "train/checkpoint.py": "",
            "posttrain/serve.py": "import gptlab.train.checkpoint\n",
        },
    )
    assert "gptlab.train.pretrain" in loaded_by("gptlab.posttrain.serve", tmp_path)


# ------------------------------------------------------------------------------------------- a quiet library
TALKERS = {"print"}  # calls that write to the terminal
EXITS = {("sys", "exit"), ("os", "_exit")}


def loud_calls(path: Path) -> list[str]:
    """`print(...)`, `sys.exit(...)`, `os._exit(...)` and `raise SystemExit` in a module, as 'file:line what'."""
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in TALKERS:
                out.append(f"{where} {f.id}()")
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in EXITS:
                out.append(f"{where} {f.value.id}.{f.attr}()")
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "SystemExit":
                out.append(f"{where} raise SystemExit")
    return out


def library_files(src: Path = SRC) -> list[Path]:
    """Every module below cli/ (the CLI parses, prints and maps outcomes to exit codes; `python -m gptlab` is the
    CLI's entry point)."""
    return [p for p in sorted(src.rglob("*.py")) if "cli" not in p.relative_to(src).parts and p.name != "__main__.py"]


def test_nothing_below_cli_prints_or_exits():
    loud = [f"{p.relative_to(SRC)}: {c}" for p in library_files() for c in loud_calls(p)]
    assert not loud, "the library talks (log through logging, return or raise instead):\n" + "\n".join(loud)


def test_the_quiet_check_sees_print_exit_and_systemexit(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "train/loop.py": "import sys\ndef f():\n    print('x')\n    sys.exit(1)\n",
            "io.py": "def g():\n    raise SystemExit(2)\ns = 'print(1)'\n",  # a string that mentions print is no call
            "cli/main.py": "print('fine here')\n",
        },
    )
    found = {p.name: loud_calls(p) for p in library_files(pkg)}
    assert found["loop.py"] == ["loop.py:3 print()", "loop.py:4 sys.exit()"]
    assert found["io.py"] == ["io.py:2 raise SystemExit"]
    assert "main.py" not in found


# ------------------------------------------------------------------------------------------- private names
def private_imports(src: Path = SRC) -> list[str]:
    """`from gptlab.x import _name` in a module other than gptlab.x itself, and `mod._name` on a gptlab module
    imported under a name (a private name is its module's own business)."""
    out = []
    for path in sorted(src.rglob("*.py")):
        me = module_name(path, src)
        aliases: dict[str, str] = {}
        tree = ast.parse(path.read_text())
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gptlab":
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if is_module(full, src.parent):
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__") and node.module != me:
                        out.append(f"{me} imports {node.module}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "gptlab" and a.asname:
                        aliases[a.asname] = a.name
        for node in _runtime_nodes(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and aliases[node.value.id] != me
            ):
                out.append(f"{me} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(out))


def test_no_module_imports_another_modules_private_names():
    found = private_imports()
    assert not found, "\n".join(found)


def test_the_private_name_check_sees_both_spellings(tmp_path):
    pkg = _fake_package(
        tmp_path,
        {
            "data/tokenizer.py": "def _bpe_files(): pass\ndef _own(): pass\nx = _own()\n",
            "interop/hf.py": "from gptlab.data.tokenizer import _bpe_files\n",
            "report/ladder.py": "from gptlab.data import tokenizer as tk\ny = tk._own()\n",
        },
    )
    assert private_imports(pkg) == [
        "gptlab.interop.hf imports gptlab.data.tokenizer._bpe_files",
        "gptlab.report.ladder uses gptlab.data.tokenizer._own",
    ]


MAX_LINES = 450  # a module a reader can hold in mind; a longer one is split along its jobs


def long_modules(src: Path = SRC) -> list[str]:
    return [
        f"{p.relative_to(src)}: {n} lines"
        for p in sorted(src.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]


def test_no_module_is_longer_than_450_lines(tmp_path):
    long = long_modules()
    assert not long, f"over {MAX_LINES} lines (split it along its jobs):\n" + "\n".join(long)
    pkg = _fake_package(tmp_path, {"a.py": "x = 1\n" * MAX_LINES, "b.py": "x = 1\n" * (MAX_LINES + 1)})
    assert long_modules(pkg) == ["b.py: 451 lines"]
