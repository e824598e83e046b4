"""`gptlab eval`: a run's (or a Hugging Face folder's) loss and perplexity on a split, or lm-evaluation-harness
tasks (--task); and the result table and vocabulary note that `gptlab train` prints too. Argument parsing and
printing only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gptlab import GptlabError
from gptlab.cli.common import COUNT, MAX_BATCH, MAX_TOKENS, POSITIVE, device, fmt, upto, verb_parser

OUTSIDE_LIMIT = 0.05  # eval refuses data with more tokens outside the run's vocabulary unless told


def outside_line(n: int, total: int, split: str) -> str:
    return (
        f"{n:,} of {total:,} {split} tokens ({100 * n / max(total, 1):.2f}%) are outside the run's vocabulary "
        "(the ids of its train split) and were scored as <|endoftext|>"
    )


def unigram(data_dir: str):
    """The unigram baseline's test loss of a prepared data folder (None when it cannot be computed)."""
    try:
        from gptlab.data.unigram import unigram_loss

        return unigram_loss(data_dir)
    except Exception:  # the baseline is informative only
        return None


def print_result_table(rows: list[dict], unigram: float | None = None) -> None:
    print(f"{'run':<28} {'params':>11} {'tokens':>11} {'train':>7} {'val':>7} {'test':>7} {'test ppl':>9} {'tok/s':>9}")
    for r in rows:
        print(
            f"{r.get('name', '?'):<28} {r['params']:>11,} {r['tokens']:>11,} {fmt(r.get('train_loss'), 3):>7} "
            f"{fmt(r.get('val_loss'), 3):>7} {fmt(r.get('test_loss'), 3):>7} {r.get('test_perplexity', 0):>9.1f} "
            f"{r.get('tokens_per_s') or 0:>9,.0f}"
        )
    if unigram is not None:
        from gptlab.train.evaluate import perplexity

        print(f"{'unigram baseline':<28} {'':>11} {'':>11} {'':>7} {'':>7} {unigram:>7.3f} {perplexity(unigram):>9.1f}")


def cmd_eval(a) -> int:
    from gptlab.train.evaluate import perplexity

    if a.task:
        return _eval_tasks(a)
    if a.limit is not None or a.include_path or a.force:
        raise GptlabError("eval: --limit, --include-path and --force go with --task NAME")
    if a.hf_dir:  # a local Hugging Face GPT-2 folder (e.g. OpenAI's GPT-2 small): the seed's yardstick
        from gptlab.interop.hf import eval_hf

        if not a.data:
            raise GptlabError("--hf-dir needs --data (the prepared data folder to evaluate on)")
        split = a.split or "test"
        loss = eval_hf(a.hf_dir, a.data, split, a.offset or 0, a.batches or 0, a.batch_size or 8, a.context, a.device)
        out = {"hf_dir": a.hf_dir, "split": split, "loss": loss, "perplexity": perplexity(loss)}
        print(json.dumps(out) if a.json else f"{split} loss {loss:.4f}  perplexity {perplexity(loss):.2f}")
        return 0
    if not a.run:
        raise GptlabError("eval: give a RUN directory or --hf-dir DIR")
    from gptlab.data.loader import TokenDataset, eval_span
    from gptlab.data.vocab import load_vocab_map
    from gptlab.train import (
        evaluate_loss,
        load_run_model,
        resolve_device,
        resolve_precision,
    )

    model, cfg = load_run_model(a.run, a.device)
    e = cfg.eval
    split = a.split or e.split
    ds = TokenDataset(a.data or cfg.data.dir, split)
    offset = e.offset if a.offset is None else a.offset
    batches = e.batches if a.batches is None else a.batches
    bs = a.batch_size or e.batch_size
    dev = resolve_device(a.device)
    vmap = load_vocab_map(a.run, cfg.model.vocab_size)
    out = {"run": str(a.run), "split": split}
    if vmap is not None:  # ids the run's vocabulary lacks are scored as <|endoftext|>: say how many, or refuse
        start, stop = eval_span(ds, cfg.model.context_length, bs, offset, batches)
        n = vmap.count_outside(ds, start, stop)
        out.update(tokens_outside_vocab=n, tokens_evaluated=stop - start)
        line = outside_line(n, stop - start, split)
        if n > OUTSIDE_LIMIT * (stop - start) and not a.allow_unknown_tokens:
            raise GptlabError(f"{ds.dir}: {line}; pass --allow-unknown-tokens to evaluate anyway")
        print(line, file=sys.stderr)
    loss = evaluate_loss(
        model,
        ds,
        cfg.model.context_length,
        bs,
        dev,
        resolve_precision("auto", dev),
        offset=offset,
        n_batches=batches,
        vocab_map=vmap,
    )
    out.update(loss=loss, perplexity=perplexity(loss), offset=offset, batches=batches, batch_size=bs)
    print(json.dumps(out) if a.json else f"{split} loss {loss:.4f}  perplexity {perplexity(loss):.2f}")
    return 0


def _eval_tasks(a) -> int:
    """`gptlab eval RUN --task NAME`: lm-evaluation-harness tasks (interop/lm_eval.py)."""
    other = [
        o
        for o, v in (
            ("--split", a.split),
            ("--data", a.data),
            ("--offset", a.offset),
            ("--batches", a.batches),
            ("--context", a.context),
        )
        if v is not None
    ]
    if other or a.allow_unknown_tokens:
        raise GptlabError(
            f"eval --task: {', '.join(other) or '--allow-unknown-tokens'} applies to the loss "
            "evaluation only (tokens outside a corpus vocabulary are counted and reported with --task)"
        )
    tasks = [t.strip() for spec in a.task for t in spec.split(",") if t.strip()]
    if not tasks:
        raise GptlabError("eval --task: no task name given")
    from gptlab.interop import lm_eval as le

    bs = a.batch_size or 16
    if a.hf_dir:
        if a.run or a.force:
            raise GptlabError(
                "eval --task with --hf-dir: give either a RUN or --hf-dir (results of --hf-dir are "
                "not stored, so --force does not apply)"
            )
        entries = le.evaluate_hf(a.hf_dir, tasks, a.limit, a.include_path, bs, a.device)
    elif not a.run:
        raise GptlabError("eval: give a RUN directory or --hf-dir DIR")
    else:
        entries = le.evaluate_run(a.run, tasks, a.limit, a.include_path, bs, a.device, a.force)
    if a.json:
        for e in entries:
            print(json.dumps(e))
        return 0
    print(f"{'task':<24} {'n':>6}  {'acc':>16}  {'acc_norm':>16}  {'chance':>6}")
    for e in entries:

        def pm(m: str, e: dict = e) -> str:
            v, se = e.get(m), e.get(f"{m}_stderr")
            return "-" if v is None else f"{v:.4f} ± {se:.4f}" if se is not None else f"{v:.4f}"

        print(f"{e['task']:<24} {e['n_docs']:>6}  {pm('acc'):>16}  {pm('acc_norm'):>16}  {fmt(e.get('chance'), 2):>6}")
        note = le.outside_note(e)
        if note:
            print(note, file=sys.stderr)
    if a.run:
        from gptlab.interop.downstream import RESULT_FILE

        reused = sum(bool(e.get("reused")) for e in entries)
        where = Path(a.run) / RESULT_FILE
        print(
            f"results in {where}"
            + (f" ({reused} reused: same task, limit, data and checkpoint; --force recomputes)" if reused else "")
        )
    return 0


def register_eval(sub) -> None:
    """The `eval` verb's parser (pretrain.register adds it among the other verbs, in --help order)."""
    s = verb_parser(
        sub,
        "eval",
        "loss and perplexity of a run's latest checkpoint on a split, or downstream "
        "tasks through lm-evaluation-harness (--task)",
        "gptlab eval runs/tiny-cpu --split test\ngptlab eval runs/tiny-cpu --split val --batches 20 --json\n"
        "gptlab eval --hf-dir ~/models/gpt2 --data data/fineweb10B --split val --offset 50000000 "
        "--batches 3200 --batch-size 6   # OpenAI GPT-2 small on the seed's test set\n"
        "gptlab eval runs/tiny-cpu --task shakespeare_cloze          # offline: bundled HellaSwag-format task\n"
        "gptlab eval runs/tiny-cpu --task hellaswag --batch-size 32  # lm-eval fetches HellaSwag from the Hub\n"
        "gptlab eval runs/tiny-cpu --task my_task --include-path my_tasks/ --limit 100\n"
        "gptlab eval --hf-dir export/tiny --task shakespeare_cloze   # an exported run through lm-eval's hf model",
    )
    s.add_argument("run", nargs="?", help="run directory")
    s.add_argument("--hf-dir", help="evaluate a local Hugging Face GPT-2 folder instead of a run")
    s.add_argument(
        "--context", type=upto(MAX_TOKENS), help="with --hf-dir: window length (default: the model's n_positions)"
    )
    s.add_argument("--split", choices=["train", "val", "test"])
    s.add_argument("--data", help="prepared data folder (default: the run's data.dir)")
    s.add_argument("--offset", type=COUNT, help="first token (default: the run's eval.offset)")
    s.add_argument("--batches", type=COUNT, help="number of batches (0 = whole split)")
    s.add_argument(
        "--batch-size",
        type=upto(MAX_BATCH),
        help="sequences per forward pass (default: the run's eval.batch_size; 16 with --task)",
    )
    s.add_argument(
        "--task",
        action="append",
        metavar="NAME",
        help="run lm-evaluation-harness task(s) NAME "
        "(repeatable or comma-separated; needs pip install -e '.[eval]'): acc and acc_norm with their "
        "stderr, kept in RUN/downstream.json and reused for the same task, limit, documents and "
        "checkpoint. Bundled offline: shakespeare_cloze; all of lm-eval's: `lm-eval ls tasks`",
    )
    s.add_argument("--limit", type=POSITIVE, metavar="N", help="with --task: only the first N documents of each task")
    s.add_argument(
        "--include-path",
        action="append",
        metavar="DIR",
        help="with --task: a folder of lm-eval task YAMLs (repeatable)",
    )
    s.add_argument(
        "--force", action="store_true", help="with --task: recompute even if RUN/downstream.json has the result"
    )
    s.add_argument("--device", default="auto", type=device)
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--allow-unknown-tokens",
        action="store_true",
        help="with a corpus-vocabulary run: evaluate even "
        f"when more than {OUTSIDE_LIMIT:.0%}% of the evaluated tokens are outside the run's vocabulary (the "
        "ids of its train split; they are scored as <|endoftext|>). Their count is always printed (stderr)",
    )
    s.set_defaults(fn=cmd_eval)
