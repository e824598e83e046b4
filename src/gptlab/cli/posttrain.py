"""`gptlab finetune`, `serve`, `judge` and `judge-compare`: argument parsing and printing only."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
from pathlib import Path

from gptlab import GptlabError
from gptlab.cli.common import (
    MAX_BATCH,
    MAX_PARALLEL,
    MAX_RETRIES,
    MAX_TOKENS,
    POSITIVE,
    SEED,
    Number,
    device,
    upto,
    verb_parser,
)


def fmt1(v) -> str:
    return "-" if v is None else f"{v:.1f}"


class Matching:
    """`type=` for a string option whose whole value must match `pattern` (`expected` says what in words)."""

    __name__ = "str"  # argparse names the type in some messages

    def __init__(self, pattern: str, expected: str):
        self.pattern, self.expected = pattern, expected

    def __call__(self, text: str) -> str:
        if re.fullmatch(self.pattern, text):
            return text
        raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}")


def _setting_options(s, cls, metavars: dict[str, str] | None = None) -> None:
    """One option per field of settings class `cls` (--batch-size for batch_size), its default, range and help
    read from the field's declaration (posttrain/settings.py), and `--set NAME=VALUE` for any field."""
    from gptlab.posttrain.settings import value_type

    for f in dataclasses.fields(cls):
        md = f.metadata
        if not md.get("flag", True):
            continue
        kw: dict = {"default": f.default, "help": md.get("help") or None}
        if "range" in md:
            kw["type"] = Number(value_type(cls, f.name)[0], md["range"].text, special=md["special"], most=md["most"])
        elif "pattern" in md:
            kw["type"] = Matching(md["pattern"], md["expected"])
        if metavars and f.name in metavars:
            kw["metavar"] = metavars[f.name]
        s.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kw)
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set any of the settings above by its name (e.g. batch_size=4), after the options",
    )


def _setting_values(a, cls) -> dict:
    return {f.name: getattr(a, f.name) for f in dataclasses.fields(cls) if f.metadata.get("flag", True)}


def _cmd_finetune(a) -> int:
    from gptlab.posttrain.finetune import finetune
    from gptlab.posttrain.settings import FinetuneSettings

    res = finetune(
        a.run,
        a.data,
        a.out,
        overrides=a.set,
        progress=not a.quiet,
        resume=a.resume,
        **_setting_values(a, FinetuneSettings),
    )
    if a.json:
        print(json.dumps(res))
        return 0
    s = res["split"]
    print(
        f"records {res['records']}: train {s['train']}, val {s['val']}, test {s['test']}"
        + (f"  (dropped, too long: {res['dropped_too_long']})" if any(res["dropped_too_long"].values()) else "")
    )
    if res.get("unknown_tokens"):
        print(
            f"note: {res['unknown_tokens']} token(s) of the data are not in the base run's compact vocabulary "
            f"(vocab_map.npy): read as <|endoftext|> and never trained on as targets"
        )

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    print(f"{'epoch':>5} {'steps':>7} {'train loss':>10} {'val loss':>9}")
    print(f"{0:>5} {0:>7} {'-':>10} {fmt(res['val_loss_before']):>9}")
    for h in res["history"]:
        print(f"{h['epoch']:>5} {h['step']:>7} {fmt(h['train_loss']):>10} {fmt(h['val_loss']):>9}")
    print(
        f"best epoch {res['best_epoch']} (val {fmt(res['best_val_loss'])}), test loss {fmt(res.get('test_loss'))}"
        + ("  [stopped early]" if res["stopped_early"] else "")
    )
    print(f"run directory: {a.out}  (try: gptlab serve {a.out})")
    return 0


def _register_finetune(sub) -> None:
    s = verb_parser(
        sub,
        "finetune",
        "instruction-fine-tune a run on Alpaca-format data (the book's chapter 7)",
        "gptlab finetune runs/tiny-cpu --data instruction-data.json --out runs/tiny-cpu-sft\n"
        "gptlab finetune runs/tiny-cpu --data alpaca.jsonl --out runs/tiny-sft --epochs 3 --lr 1e-4\n"
        "gptlab finetune runs/tiny-cpu --data instruction-data.json --out runs/tiny-cpu-sft --resume\n"
        '# data: a JSON list (or .jsonl) of {"instruction", "input", "output"} records, e.g. the\n'
        "# book's instruction-data.json (rasbt/LLMs-from-scratch, ch07/01_main-chapter-code)",
    )
    s.add_argument("run", help="base run directory (its latest checkpoint is fine-tuned)")
    from gptlab.posttrain.settings import FinetuneSettings

    s.add_argument("--data", required=True, help="Alpaca-format .json list or .jsonl file")
    s.add_argument("--out", required=True, help="output run directory")
    _setting_options(s, FinetuneSettings)
    s.add_argument("--resume", action="store_true", help="continue an interrupted fine-tune in --out")
    s.add_argument("--json", action="store_true", help="print finetune.json instead of a table")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=_cmd_finetune)


def _cmd_serve(a) -> int:
    from gptlab.posttrain.serve import serve
    from gptlab.posttrain.settings import ServeSettings

    key = None
    if a.api_key_env:
        key = os.environ.get(a.api_key_env)
        if not key:
            raise GptlabError(f"--api-key-env: environment variable {a.api_key_env} is not set or empty")
    # the server's log (the "serving ... at URL" line, one line per request, warnings) is a server log: timestamped
    # lines on stderr, next to uvicorn's, not the console's plain progress lines on stdout
    server_log = logging.getLogger("gptlab.posttrain.serve")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    server_log.addHandler(handler)
    propagate, server_log.propagate = server_log.propagate, False
    try:
        serve(a.run, api_key=key, overrides=a.set, **_setting_values(a, ServeSettings))
    finally:
        server_log.removeHandler(handler)
        server_log.propagate = propagate
    return 0


def _register_serve(sub) -> None:
    s = verb_parser(
        sub,
        "serve",
        "serve a run with an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)",
        "gptlab serve runs/tiny-cpu-sft --port 8000\n"
        "MY_KEY=secret gptlab serve runs/tiny-cpu-sft --host 0.0.0.0 --api-key-env MY_KEY\n"
        "gptlab serve runs/tiny-cpu-sft --max-batch 16 --batch-wait-ms 5   # bigger batches, more waiting\n"
        "gptlab serve runs/tiny-cpu-sft --max-batch 1                      # one request at a time\n"
        "curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        '  -d \'{"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 20}\'\n'
        '# API docs: http://localhost:8000/docs; the openai client: OpenAI(base_url="http://localhost:8000/v1")',
    )
    from gptlab.posttrain.settings import ServeSettings

    s.add_argument("run", help="run directory (e.g. a `gptlab finetune` output)")
    s.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="require 'Authorization: Bearer $NAME' (the key is read "
        "from this environment variable, never from the command line)",
    )
    _setting_options(s, ServeSettings, {"read_timeout": "SECONDS", "max_batch": "N", "batch_wait_ms": "MS"})
    s.set_defaults(fn=_cmd_serve)


def _cmd_judge(a) -> int:
    from gptlab.posttrain.judge import JUDGE_FILE, judge_run

    res = judge_run(
        a.run,
        a.judge_url,
        a.judge_model,
        data_file=a.data,
        n=a.n,
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        judge_temperature=a.judge_temperature,
        api_key_env=a.api_key_env,
        db=a.db,
        run_id=a.run_id,
        retries=a.retries,
        timeout=a.timeout,
        seed=a.seed,
        device=a.device,
        judge_max_tokens=a.judge_max_tokens,
        progress=not a.quiet,
        batch_size=a.batch,
        concurrency=a.concurrency,
    )
    if a.json:
        print(json.dumps({k: v for k, v in res.items() if k != "items"}))
    else:
        print(
            f"{res['run_id']}: mean score {fmt1(res['mean_score'])} / 100 over {res['n_parsed']} item(s) "
            f"({res['n_unparsed']} unparsed) by {res['judge_model']}; details in {Path(a.run) / JUDGE_FILE}"
        )
    return 0


def _parse_runs(specs: list[str]) -> dict[str, str]:
    runs: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).resolve().name, spec
        if not name or not path:
            raise GptlabError(f"judge-compare: {spec!r}: expected NAME=RUN_DIR or RUN_DIR")
        if name in runs:
            raise GptlabError(f"judge-compare: the name {name!r} is given twice; use NAME=RUN_DIR")
        runs[name] = path
    return runs


def _cmd_compare(a) -> int:
    from gptlab.posttrain.judge import judge_compare

    res = judge_compare(
        _parse_runs(a.runs),
        a.judge_url,
        a.judge_model,
        data_file=a.data,
        n=a.n,
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        judge_temperature=a.judge_temperature,
        api_key_env=a.api_key_env,
        db=a.db,
        retries=a.retries,
        timeout=a.timeout,
        seed=a.seed,
        device=a.device,
        judge_max_tokens=a.judge_max_tokens,
        out=a.out,
        progress=not a.quiet,
        batch_size=a.batch,
        concurrency=a.concurrency,
    )
    if a.json:
        print(json.dumps({k: v for k, v in res.items() if k != "items"}))
        return 0
    print(f"{'model':<28} {'mean score':>10} {'parsed':>7}")
    for nm, m in sorted(res["models"].items(), key=lambda kv: -(kv[1]["mean_score"] or -1)):
        print(f"{nm:<28} {fmt1(m['mean_score']):>10} {m['n_parsed']:>7}")
    print(
        f"{res['n']} item(s), {res['n_unparsed']} unparsed, judge {res['judge_model']}"
        + (f"; details in {a.out}" if a.out else "")
    )
    return 0


def _judge_args(s) -> None:
    s.add_argument("--judge-url", required=True, help="OpenAI-compatible base URL (…/v1) or …/chat/completions")
    s.add_argument("--judge-model", required=True, help="model name sent to the judge endpoint")
    s.add_argument("--data", help="Alpaca-format records (default: the fine-tune's held-out test split)")
    s.add_argument("--n", type=POSITIVE, help="judge only the first N items")
    s.add_argument(
        "--max-new-tokens", type=upto(MAX_TOKENS), default=256, help="answer length limit for the judged run(s)"
    )
    s.add_argument(
        "--batch",
        type=upto(MAX_BATCH),
        default=8,
        metavar="N",
        help="generate the answers N at a time as one batch (default 8; the answers do not change)",
    )
    s.add_argument(
        "--temperature",
        type=Number(float, "[0, inf)"),
        default=0.0,
        help="sampling temperature of the judged run(s) (0 = greedy)",
    )
    s.add_argument(
        "--judge-temperature", type=Number(float, "[0, 2]"), default=0.0, help="temperature sent to the judge"
    )
    s.add_argument(
        "--judge-max-tokens", type=upto(MAX_TOKENS), default=None, help="max_tokens sent to the judge (default: unset)"
    )
    s.add_argument(
        "--api-key-env",
        default="JUDGE_API_KEY",
        metavar="NAME",
        help="environment variable holding the judge's API key (default JUDGE_API_KEY; unset = no key)",
    )
    s.add_argument("--db", help="results.sqlite to record the per-item scores in")
    s.add_argument("--retries", type=upto(MAX_RETRIES, 0), default=2, help="re-asks for a reply without a usable score")
    s.add_argument("--timeout", type=Number(float, "(0, inf)"), default=60, help="seconds per judge request")
    s.add_argument(
        "--concurrency",
        type=upto(MAX_PARALLEL),
        default=4,
        metavar="N",
        help="judge requests in flight at once (default 4; the scores keep the items' order)",
    )
    s.add_argument("--seed", type=SEED, default=123)
    s.add_argument("--device", default="auto", type=device)
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")


def _register_judge(sub) -> None:
    s = verb_parser(
        sub,
        "judge",
        "score a run's answers to held-out instructions with an LLM judge (0-100)",
        "gptlab judge runs/tiny-cpu-sft --judge-url http://127.0.0.1:11434/v1 --judge-model llama3\n"
        "JUDGE_API_KEY=... gptlab judge runs/tiny-cpu-sft --judge-url https://HOST/v1 "
        "--judge-model MODEL --db experiments/sft/results.sqlite --n 50",
    )
    s.add_argument("run", help="run directory (a `gptlab finetune` output has a held-out test split)")
    s.add_argument("--run-id", help="run id for --db (default: the run folder's name)")
    _judge_args(s)
    s.set_defaults(fn=_cmd_judge)

    s = verb_parser(
        sub,
        "judge-compare",
        "score several runs' answers side by side in one judge prompt per item (neutral labels, seeded random order)",
        "gptlab judge-compare base=runs/sft-baseline rope=runs/sft-rope "
        "--judge-url http://127.0.0.1:11434/v1 --judge-model llama3 --out compare.json",
    )
    s.add_argument("runs", nargs="+", help="NAME=RUN_DIR (or RUN_DIR: named after its folder), at least two")
    s.add_argument("--out", help="write the per-item rows to this JSON file")
    _judge_args(s)
    s.set_defaults(fn=_cmd_compare)


def register(sub) -> None:
    _register_finetune(sub)
    _register_serve(sub)
    _register_judge(sub)
