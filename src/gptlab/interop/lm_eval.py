"""Downstream evaluation through EleutherAI's lm-evaluation-harness (`pip install -e '.[eval]'`).

`GptlabLM` (lm_eval_model.py) is an lm-eval model class, registered as "gptlab", that scores with a run's own model:
`loglikelihood` and `loglikelihood_rolling` from the GPTModel of the run's latest checkpoint (any architecture
gptlab trains), batched, under no_grad, with the context cut from the left to the model's context length exactly as
lm-eval's `hf` model does; text is GPT-2 BPE (tokenizer.py). A run with a corpus vocabulary (vocab.py) scores over
its compact vocabulary; tokens it lacks are fed and scored as <|endoftext|>, as `gptlab eval` does for losses, and
counted (`tokens_outside_vocab`, `context_tokens_outside_vocab`). `generate_until` tasks are refused.

`evaluate_run` runs `lm_eval.simple_evaluate` for each task and keeps the results with the run in
RUN/downstream.json, one entry per (task, limit, sha256 of the documents evaluated, checkpoint): the same
evaluation again is read back instead of recomputed unless forced.

    import gptlab.interop.lm_eval, lm_eval                # registers "gptlab" with lm-eval
    lm_eval.simple_evaluate(model="gptlab", model_args="run=runs/tiny-cpu", tasks=["hellaswag"])

Tasks are lm-eval's own (hellaswag: data from the Hugging Face Hub, fetched by lm-eval when online), the ones
bundled here (lm_eval_tasks/: `shakespeare_cloze`, offline), and task YAMLs in folders given as `include_path`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from gptlab import GptlabError
from gptlab.interop.downstream import (
    checkpoint_id,
    entry_key,
    read_results,
    store_result,
)
from gptlab.interop.lm_eval_model import GptlabLM  # registers "gptlab"; one line when lm-eval is not installed
from gptlab.io import first_line

try:
    import lm_eval
except ModuleNotFoundError:  # pragma: no cover - install problem (lm_eval_model said so first)
    raise GptlabError(
        "downstream evaluation needs lm-evaluation-harness: pip install -e '.[eval]' (or pip install 'lm-eval>=0.4')"
    ) from None

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
METRICS = ("acc", "acc_norm")  # reported with their stderr, as llm.c reports HellaSwag


def bundled_tasks() -> dict[str, Path]:
    """Task name -> YAML of the tasks shipped with gptlab."""
    return {p.stem: p for p in sorted(TASKS_DIR.glob("*.yaml"))}


def _bundled_spec(path: Path) -> dict:
    """A bundled task's config with its data_files made absolute (datasets resolves relative ones from the
    current directory)."""
    import yaml

    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    files = spec.get("dataset_kwargs", {}).get("data_files", {})
    spec["dataset_kwargs"]["data_files"] = {k: str(path.parent / v) for k, v in files.items()}
    return spec


def yaml_errors(include_path: list[str]) -> list[str]:
    """ "FILE line N: the parser's message" for each .yaml/.yml under the folders that does not parse as YAML
    (lm-eval's tags such as `!function` are accepted: they are lm-eval's to resolve)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    out = []
    for folder in include_path:
        for f in sorted(p for p in Path(folder).rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()):
            try:
                yaml.load(f.read_text(encoding="utf-8"), Loader=Loader)  # a SafeLoader subclass
            except UnicodeDecodeError as e:
                out.append(f"{f}: not UTF-8 text (byte {e.start})")
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
                msg = " ".join(str(getattr(e, "problem", None) or e).split())
                out.append(f"{f}{where}: {msg}")
    return out


def load_tasks(names: list[str], include_path: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """(TaskManager, {task name: lm-eval Task}) for `names`: bundled tasks first, then task YAMLs under
    `include_path`, then lm-eval's own (indexing those takes seconds, so only when needed). An unknown
    name is a one-line GptlabError."""
    import datasets
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()  # "Generating validation split" bars: not ours to show
    for p in include_path or []:
        if not Path(p).is_dir():
            raise GptlabError(f"--include-path {p}: not a folder (expected a folder of lm-eval task YAMLs)")
    bundled = bundled_tasks()
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        tm = TaskManager(include_path=list(include_path or []) or None, include_defaults=False)
        if any(n not in bundled and n not in tm.all_tasks for n in names):
            tm = TaskManager(include_path=list(include_path or []) or None)
        specs: list[Any] = []
        for n in names:
            if n in tm.all_tasks:
                specs.append(n)
            elif n in bundled:
                specs.append(_bundled_spec(bundled[n]))
            else:
                import difflib

                broken = yaml_errors(include_path or [])
                if broken:  # lm-eval skips a task YAML it cannot parse with a warning: say why it is not found
                    raise GptlabError(
                        f"--task {n}: not found; {len(broken)} task YAML(s) under --include-path do "
                        f"not parse: {broken[0]}" + (f" (and {len(broken) - 1} more)" if len(broken) > 1 else "")
                    )
                near = difflib.get_close_matches(n, list(bundled) + tm.all_tasks, n=3)
                raise GptlabError(
                    f"--task {n}: no such lm-eval task (not bundled with gptlab: {', '.join(bundled)}; not in "
                    f"--include-path; not among lm-eval {lm_eval.__version__}'s {len(tm.all_tasks):,} tasks"
                    + (f"; did you mean {', '.join(near)}?" if near else "")
                    + "); list them with `lm-eval ls tasks`"
                )
        try:
            loaded = tm.load(specs)
        except OSError as e:  # (ConnectionError too) a Hub dataset (hellaswag, ...) without a network or a cache
            first = first_line(e)
            raise GptlabError(
                f"--task {', '.join(names)}: lm-eval could not load the task's data ({first}); "
                "Hub datasets such as HellaSwag need a network the first time (then they are "
                "cached); offline, use a local task (shakespeare_cloze or --include-path)"
            ) from None
    finally:
        quiet.setLevel(level)
    tasks = loaded["tasks"]
    for name, task in tasks.items():
        kind = task.get_config("output_type")
        if kind == "generate_until":
            raise GptlabError(
                f"--task {name}: a generation task (output_type generate_until); gptlab's lm-eval "
                "model scores log-likelihoods only (multiple-choice and perplexity tasks)"
            )
    return tm, tasks


def docs_sha256(task, limit: int | None) -> tuple[str, int]:
    """(sha256 over the documents lm-eval evaluates: the first `limit` of the task's eval split, as
    processed by the task, canonical JSON; their number)."""
    h = hashlib.sha256()
    n = 0
    for doc in task.eval_docs:
        if limit is not None and n >= limit:
            break
        h.update(json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
        n += 1
    return h.hexdigest(), n


def task_sha256(task) -> str:
    """sha256 of how lm-eval evaluates the task: its settings (task.dump_config(): prompt template, choices,
    delimiters, few-shot, metrics; functions by their qualified name) and lm-eval's version. With the documents'
    sha256 it keys a stored result, so an edited task YAML or another lm-eval is evaluated afresh."""

    def name(o) -> str:
        return f"{getattr(o, '__module__', '')}.{getattr(o, '__qualname__', repr(o))}" if callable(o) else str(o)

    blob = json.dumps([task.dump_config(), lm_eval.__version__], sort_keys=True, default=name)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _metrics(res: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for m in METRICS:
        for name in (m, f"{m}_stderr"):
            v = res.get(f"{name},none")
            out[name] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    return out


def evaluate_run(
    run_dir: str | Path,
    tasks: list[str],
    limit: int | None = None,
    include_path: list[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
    force: bool = False,
    lm: GptlabLM | None = None,
) -> list[dict]:
    """Run lm-eval's `simple_evaluate` on the run's latest checkpoint for each task (a group expands to its
    tasks); return one entry per task, read back from RUN/downstream.json when that exact evaluation (task,
    limit, documents' sha256, task settings' sha256, checkpoint) is there and not `force`, else computed and stored
    (atomically)."""
    from gptlab.train import latest_checkpoint

    run_dir = Path(run_dir)
    ck = latest_checkpoint(run_dir)
    if ck is None:
        raise GptlabError(f"{run_dir}: no checkpoint yet (checkpoints/latest missing)")
    tm, loaded = load_tasks(tasks, include_path)
    stored, ck_id = read_results(run_dir), checkpoint_id(ck)
    out = []
    for name, task in loaded.items():
        sha, n_docs = docs_sha256(task, limit)
        settings = task_sha256(task)
        key = entry_key(name, limit, sha, settings, ck_id)
        if key in stored and not force:
            out.append(dict(stored[key], reused=True))
            continue
        if lm is None:
            lm = GptlabLM(run=str(run_dir), device=device, batch_size=batch_size)
        lm.reset_counts()
        t0 = time.time()
        quiet = logging.getLogger("lm_eval")
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit, log_samples=False)
        finally:
            quiet.setLevel(level)
        r = res["results"][name]
        entry = dict(
            task=name,
            limit=limit,
            n_docs=int(res.get("n-samples", {}).get(name, {}).get("effective", n_docs)),
            data_sha256=sha,
            task_sha256=settings,
            checkpoint=ck_id,
            **_metrics(r),
            chance=_chance(task),
            counts=dict(lm.counts),
            lm_eval_version=lm_eval.__version__,
            task_version=res.get("versions", {}).get(name),
            seconds=round(time.time() - t0, 2),
            evaluated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        store_result(run_dir, key, entry)
        out.append(dict(entry, reused=False))
    return out


def evaluate_hf(
    hf_dir: str | Path,
    tasks: list[str],
    limit: int | None = None,
    include_path: list[str] | None = None,
    batch_size: int = 16,
    device: str = "auto",
) -> list[dict]:
    """The same evaluation of a local Hugging Face folder (e.g. `gptlab export`'s) through lm-eval's own `hf`
    model class; nothing is stored. Offline: the folder must hold the weights and tokenizer files."""
    from gptlab.train import resolve_device

    if not (Path(hf_dir) / "config.json").is_file():
        raise GptlabError(f"--hf-dir {hf_dir}: no config.json (expected a Hugging Face model folder)")
    tm, loaded = load_tasks(tasks, include_path)
    quiet = logging.getLogger("lm_eval")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        res = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(hf_dir), "dtype": "float32"},
            tasks=list(loaded.values()),
            task_manager=tm,
            limit=limit,
            batch_size=batch_size,
            device=str(resolve_device(device)),
            log_samples=False,
        )
    finally:
        quiet.setLevel(level)
    out = []
    for name, task in loaded.items():
        sha, n_docs = docs_sha256(task, limit)
        out.append(
            dict(
                task=name,
                limit=limit,
                n_docs=n_docs,
                data_sha256=sha,
                hf_dir=str(hf_dir),
                **_metrics(res["results"][name]),
                chance=_chance(task),
                lm_eval_version=lm_eval.__version__,
            )
        )
    return out


def _chance(task) -> float | None:
    """1 / number of choices when every document has the same number (a multiple-choice task), else None."""
    if task.get_config("output_type") != "multiple_choice":
        return None
    try:
        sizes = {len(task.doc_to_choice(d)) for d in task.eval_docs}
    except Exception:  # the chance line is informative only
        return None
    return 1.0 / sizes.pop() if len(sizes) == 1 else None


def outside_note(entry: dict) -> str | None:
    """A line for results that scored tokens the run's vocabulary lacks (as <|endoftext|>)."""
    c = entry.get("counts") or {}
    n, total = c.get("tokens_outside_vocab", 0), c.get("tokens_scored", 0)
    nc, totc = c.get("context_tokens_outside_vocab", 0), c.get("context_tokens", 0)
    if not (n or nc):
        return None
    return (
        f"{entry['task']}: {n:,} of {total:,} scored tokens ({100 * n / max(total, 1):.2f}%) and {nc:,} of "
        f"{totc:,} context tokens are outside the run's vocabulary and were scored as <|endoftext|>"
    )
