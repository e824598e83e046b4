"""Writing the report: the experiment's runs read from results.sqlite, the rows and plots computed, report.md
rendered from its template (report.md.j2; the ladder's report, ladder.md.j2, is rendered here too, both sharing
parts.md.j2), and report.html converted from that same Markdown by
python-markdown into a standalone page (CSS inline, the plots embedded as data URIs)."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markdown
from markdown.treeprocessors import Treeprocessor

from gptlab import GptlabError
from gptlab.experiments.analysis.compare import build_rows
from gptlab.experiments.analysis.yardsticks import YARDSTICKS, comparability, run_test_set
from gptlab.experiments.report.plots import report_plots
from gptlab.experiments.report.regime import experiment_regime, load_target
from gptlab.experiments.report.rows import (
    report_warnings,
    verdict_rules,
    verdict_sentence,
    yardstick_part,
)
from gptlab.experiments.report.tables import (
    markdown_table,
    runs_table,
    variants_table,
    verdict_table,
)
from gptlab.experiments.results import DB_NAME, ResultsDB
from gptlab.experiments.specs.experiment import TUNE_MARK
from gptlab.io import atomic_write_bytes, atomic_write_text


def write_report(
    exp_dir: str | Path,
    baseline: str = "baseline",
    experiment: str | None = None,
    reference: dict[str, float] | None = None,
    title: str | None = None,
    alpha: float = 0.05,
    run_ids: set[str] | None = None,
    equivalence_margin: float | None = None,
    design: str = "independent",
    tuned: bool = False,
    variants: list[str] | None = None,
    target: tuple[str | Path, float | None] | None = None,
) -> dict:
    """Write report.md, report.html and plots/*.png into exp_dir; return paths, the table and the rows.
    `run_ids`: report only these runs (the runner passes its spec's matrix; other rows stay in the database);
    `variants`: only these variants' runs (`gptlab report` passes spec.toml's). A tuned experiment's sweep and
    tuned runs (VARIANT@lr=..., tuning.py) are never variants of their own.
    `alpha`, `equivalence_margin` (nats) and `design` ("independent" or "paired") decide the verdicts
    (compare.build_rows) and are printed in the report's Rules part. `tuned`: the experiment has a tune setting; its
    sweep.json's tuned runs get a second verdict table, each variant at its chosen value (tuning.py)."""
    exp_dir = Path(exp_dir)
    ex = _read_experiment(exp_dir, experiment, run_ids, variants)
    variants = sorted({str(r.get("variant") or "") for r in ex.runs})
    if baseline not in variants:
        raise GptlabError(
            f"baseline variant {baseline!r} not found in {exp_dir}; variants present: {', '.join(variants)}"
        )
    rows = build_rows(
        ex.runs,
        baseline,
        judge=ex.judge,
        reference=reference,
        alpha=alpha,
        equivalence_margin=equivalence_margin,
        design=design,
    )
    rules = verdict_rules(baseline, alpha, equivalence_margin, design, rows[0]["n_comparisons"])
    rules += _sequential_verdicts(exp_dir, rows)
    tuned_part = _tuned_part(exp_dir, experiment, baseline, alpha, equivalence_margin, design) if tuned else None
    if tuned_part:
        rules.append(tuned_part["rule"])
    yard = yardstick_part(rows, baseline, comparability(ex.test_sets))
    pngs = report_plots(ex.metrics, rows, baseline, YARDSTICKS if yard["comparable"] else ())
    for name, data in pngs.items():
        atomic_write_bytes(exp_dir / "plots" / name, data)
    title = title or f"Results: {experiment or ex.name or exp_dir.name}"
    run_dirs = {}
    for r in ex.runs:
        rd = _run_dir_of(exp_dir, r)
        if rd is not None:
            run_dirs.setdefault(str(r.get("variant") or ""), rd)
    losses = defaultdict(list)
    for r in ex.runs:
        losses[str(r.get("variant") or "")].append(r.get("test_loss"))
    regime = experiment_regime(run_dirs, losses, baseline, load_target(*(target or (None, None))))
    md_text = render_markdown(
        title=title,
        runs=ex.runs,
        rows=rows,
        baseline=baseline,
        alpha=alpha,
        db_path=ex.db_path,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        yard=yard,
        regime=regime,
        verdicts=verdict_table(rows),
        one_in=round(1 / alpha),
        design=design,
        rules=rules,
        warnings=report_warnings(ex.runs, rows, baseline),
        tuned=tuned_part,
        plots=list(pngs),
        variants=variants_table(rows),
        runs_table=runs_table(ex.runs, [r["variant"] for r in rows]),
    )
    md_path, html_path = exp_dir / "report.md", exp_dir / "report.html"
    atomic_write_text(md_path, md_text)
    atomic_write_text(html_path, render_html(md_text, title, pngs))
    return {
        "markdown": str(md_path),
        "html": str(html_path),
        "plots": [str(exp_dir / "plots" / n) for n in pngs],
        "table": markdown_table(*verdict_table(rows)),
        "rows": rows,
        "yardsticks": yard,
        "tuned": tuned_part,
        "regime": regime,
    }


def _tuned_part(
    exp_dir: Path, experiment: str | None, baseline: str, alpha: float, equivalence_margin: float | None, design: str
) -> dict | None:
    """The comparison of every variant at its chosen value (sweep.json's tuned runs, relabelled with their
    variant's name), the sweep's table and notes, and the rule; None before the tuned runs have finished."""
    from gptlab.experiments.analysis.tuning import format_sweep, read_sweep, sweep_notes
    from gptlab.experiments.specs.experiment import label

    sweep = read_sweep(exp_dir)
    if not sweep or "tuned_runs" not in sweep:
        return None
    names = sweep["tuned_runs"]
    runs = [dict(r, variant=names[r["run_id"]]) for r in _read_experiment(exp_dir, experiment, set(names)).runs]
    rows = build_rows(runs, baseline, alpha=alpha, equivalence_margin=equivalence_margin, design=design)
    short = sweep["param"].rsplit(".", 1)[-1]
    for r in rows:
        r["variant"] = f"{r['variant']} ({short}={label(sweep['best'][r['variant']])})"
    rule = (
        f"Each variant at its best {sweep['param']}: chosen per variant by the {sweep['criterion']} "
        f"(seeds {', '.join(map(str, sweep['seeds']))}, not the experiment's), then trained on the "
        f"experiment's seeds and judged by the rules above, Holm-adjusted within its own table "
        f"({rows[0]['n_comparisons']} comparison(s))."
    )
    return {
        "param": sweep["param"],
        "rows": rows,
        "verdicts": verdict_table(rows),
        "sweep": format_sweep(sweep),
        "notes": sweep_notes(sweep),
        "rule": rule,
    }


@dataclass
class _Experiment:
    """What the report needs from results.sqlite and the run directories."""

    db_path: Path
    name: str | None  # the one experiment recorded, if it has a name
    runs: list[dict]
    judge: dict[str, float]
    test_sets: dict[str, dict | None]  # run id -> yardsticks.run_test_set() of its run directory
    metrics: dict[str, list[list[dict]]]  # variant -> per-step metrics of each of its runs


def _read_experiment(
    exp_dir: Path, experiment: str | None, run_ids: set[str] | None = None, variants: list[str] | None = None
) -> _Experiment:
    db_path = exp_dir / DB_NAME
    if not db_path.exists():
        raise GptlabError(f"no {DB_NAME} in {exp_dir}: no finished runs have been recorded there")
    with ResultsDB(db_path, create=False) as db:
        runs = [r for r in db.runs(experiment) if run_ids is None or r["run_id"] in run_ids]
        if run_ids is None:
            runs = [
                r for r in runs if TUNE_MARK not in str(r["variant"]) and (variants is None or r["variant"] in variants)
            ]
        if not runs:
            what = f" for experiment {experiment!r}" if experiment is not None else ""
            present = sorted({str(r.get("experiment")) for r in db.runs()})
            extra = f" (experiments present: {', '.join(present)})" if experiment is not None and present else ""
            raise GptlabError(f"{db_path} has no finished runs{what}{extra}")
        experiments = sorted({str(r.get("experiment")) for r in runs})
        if experiment is None and len(experiments) > 1:
            raise GptlabError(
                f"{db_path} holds runs of several experiments ({', '.join(experiments)}); pick one with experiment=..."
            )
        metrics: dict[str, list[list[dict]]] = defaultdict(list)
        for r in runs:
            metrics[str(r.get("variant") or "")].append(db.metrics(r["run_id"]))
        judge = db.judge_summary()
    test_sets = {}
    from gptlab.interop.downstream import report_columns

    for r in runs:
        rd = _run_dir_of(exp_dir, r)
        test_sets[str(r["run_id"])] = run_test_set(rd) if rd is not None else None
        r["downstream"] = report_columns(rd)  # RUN/downstream.json (gptlab eval RUN --task NAME), if any
    name = experiments[0] if experiments and experiments[0] != "None" else None
    return _Experiment(db_path, name, runs, judge, test_sets, metrics)


def _run_dir_of(exp_dir: Path, r: dict) -> Path | None:
    """The run's directory: as recorded, or exp_dir/runs/RUN_ID (a relative path recorded from another cwd)."""
    for cand in ([Path(r["run_dir"])] if r.get("run_dir") else []) + [exp_dir / "runs" / str(r["run_id"])]:
        if (cand / "config.toml").is_file():
            return cand
    return None


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_TEMPLATES.globals.update(table=markdown_table, verdict_sentence=verdict_sentence)


def render_markdown(template: str = "report.md.j2", **context) -> str:
    """A report template filled in: report.md.j2 (the context write_report gives it) or ladder.md.j2
    (report/ladder.py's write_ladder_report); both import the shared parts.md.j2."""
    return _TEMPLATES.get_template(template).render(**context)


_CSS = """
body{font-family:-apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1f2328;line-height:1.5}
h1{border-bottom:1px solid #d0d7de;padding-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #eaeef2}
h1+p{color:#57606a;font-size:.9em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:right;white-space:nowrap}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fbfcfd}
.better{color:#1a7f37;font-weight:600}.worse{color:#c62828;font-weight:600}.noise{color:#57606a}
.suggestive{color:#9a6700}.equivalent{color:#0969da}
.baseline{font-weight:600}blockquote{margin:1em 0;background:#fff8c5;padding:.6em 1em;border-left:4px solid #d4a72c}
blockquote p,blockquote ul{margin:0}img{max-width:100%;height:auto;display:block;margin:1em 0}
"""


def render_html(md_text: str, title: str, pngs: dict[str, bytes]) -> str:
    """report.html: the Markdown converted, in a page that needs no other file."""
    md = markdown.Markdown(extensions=["tables"])
    md.treeprocessors.register(_Standalone(md, pngs), "gptlab_standalone", 0)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"{md.convert(md_text)}\n</body></html>\n"
    )


class _Standalone(Treeprocessor):
    """The two touches the HTML gets beyond Markdown: images linked as plots/NAME become data URIs of the
    PNG bytes, and each cell of a table's verdict column gets the class its colour comes from."""

    def __init__(self, md: markdown.Markdown, pngs: dict[str, bytes]):
        super().__init__(md)
        self.pngs = pngs

    def run(self, root) -> None:
        for img in root.iter("img"):
            name = img.get("src", "").removeprefix("plots/")
            if name in self.pngs:
                img.set("src", "data:image/png;base64," + base64.b64encode(self.pngs[name]).decode("ascii"))
        for table in root.iter("table"):
            headers = [th.text for th in table.iter("th")]
            if "verdict" in headers:
                col = headers.index("verdict")
                for tr in table.find("tbody"):
                    tr[col].set("class", _verdict_class(tr[col].text or ""))


def _verdict_class(verdict: str) -> str:
    if verdict in ("better", "worse", "baseline"):
        return verdict
    return next((c for c in ("suggestive", "equivalent") if verdict.startswith(c)), "noise")


def _sequential_verdicts(exp_dir: Path, rows: list[dict]) -> list[str]:
    """An experiment run with --until-decided (EXP/sequential.json): each variant's verdict is its sequential
    decision, whose rule is returned for the Rules part; the p columns stay fixed-design numbers."""
    path = exp_dir / "sequential.json"
    if not path.is_file():
        return []
    seq = json.loads(path.read_text())
    for r in rows:
        decision = seq["variants"].get(r["variant"], {}).get("decision")
        if decision in ("better", "worse"):
            r["verdict"] = decision
        elif decision == "within noise":
            r["verdict"] = f"within noise at n={r['n']}"
        elif decision == "undecided":
            r["verdict"] = f"undecided at n={r['n']}"
    test = seq.get("test", "Welch's t-test")  # a sequential.json written before the design's test was recorded
    return [
        f"Sequential design (`--until-decided`, sequential.json): {seq['design']}, alpha {seq['alpha']} split "
        f"over {seq['family']} variant(s) (Bonferroni: {seq['alpha_per_variant']:.4g} each), up to "
        f"{seq['max_seeds']} seeds, looks at {', '.join(map(str, seq['planned_looks_seeds']))} seeds. These "
        f"verdicts replace the rules above: **better** / **worse** when the variant's p "
        f"({test}, the design's test) at a look is at "
        f"or below that look's O'Brien-Fleming nominal p; **within noise** when it reached the last look without "
        f"crossing; **undecided** when the run stopped before. The p and Holm columns are fixed-design numbers "
        f"that do not account for the looks."
    ]
