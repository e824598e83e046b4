"""Running a judgement, as in chapter 7 of Raschka's book: generate a run's answers to held-out instructions,
then ask the judge endpoint to score each answer from 0 to 100 against the reference output.

`judge_run` asks for one score per answer; a reply without one is asked again `retries` times and then
recorded as unparsed (score None, left out of the mean). `judge_compare` scores several runs' answers to the
same instruction in ONE prompt, under neutral labels in an order shuffled per item with a fixed seed (so no
model always sits first: position bias averages out, and the order is reproducible).

Answers are deterministic: greedy decoding at temperature 0 (sampling with seed + item otherwise), dropout off.
They are generated `batch_size` at a time (Generator.complete_batch); each answer is the one the item would get
alone. The judge is asked about `concurrency` items at a time (threads; results keep the items' order), since
a judge server (Ollama, vLLM, `gptlab serve`) answers concurrent requests together.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from gptlab import GptlabError
from gptlab.experiments.results import record_judge_scores
from gptlab.io import atomic_write_json
from gptlab.posttrain.generate import Generator, Sampling
from gptlab.posttrain.instructions import TEST_FILE, format_prompt, load_records
from gptlab.posttrain.judge.client import JudgeClient, public_url
from gptlab.posttrain.judge.prompts import (
    compare_order,
    compare_prompt,
    labels_for,
    parse_compare,
    parse_score,
    score_prompt,
)

JUDGE_FILE = "judge.json"


def _progress(enabled: bool, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr, disable=not enabled)


def _records(run_dir: Path | None, data_file, n: int | None) -> tuple[list[dict], str]:
    if data_file is not None:
        recs, src = load_records(data_file), str(data_file)
    else:
        p = Path(run_dir) / TEST_FILE
        if not p.is_file():
            raise GptlabError(
                f"{run_dir}: no held-out test split ({TEST_FILE}; only `gptlab finetune` runs have "
                f"one); pass --data FILE.json"
            )
        recs, src = load_records(p), f"{run_dir} test split"
    if n is not None:
        if n < 1:
            raise GptlabError(f"judge: n: expected a positive number of items, got {n}")
        recs = recs[:n]
    return recs, src


def _shared_test_split(run_dirs: dict[str, str | Path], n: int | None) -> tuple[list[dict], str]:
    """The held-out test split the runs that have one agree on."""
    names = [nm for nm in run_dirs if (Path(run_dirs[nm]) / TEST_FILE).is_file()]
    if not names:
        raise GptlabError(
            f"judge-compare: none of the runs has a held-out test split ({TEST_FILE}); pass --data FILE.json"
        )
    first = load_records(Path(run_dirs[names[0]]) / TEST_FILE)
    for nm in names[1:]:
        if load_records(Path(run_dirs[nm]) / TEST_FILE) != first:
            raise GptlabError(
                f"judge-compare: runs {names[0]} and {nm} hold out different test splits "
                f"(one's test items may be the other's training data); pass --data FILE.json"
            )
    return _records(Path(run_dirs[names[0]]), None, n)


def generate_answers(
    run_dir: str | Path,
    records: list[dict],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 123,
    device: str = "auto",
    progress: bool = False,
    desc: str = "answers",
    batch_size: int = 8,
) -> list[str]:
    """The run's answer to each record (the text after "### Response:" up to <|endoftext|>, stripped),
    generated `batch_size` records at a time."""
    gen = Generator.from_run(run_dir, device)
    prompts = [gen.encode(format_prompt(rec)) for rec in records]
    samplings = [Sampling(temperature, seed=(seed + i) if temperature > 0 else None) for i in range(len(records))]
    with _progress(progress, len(records), desc) as bar:
        outs = gen.complete_batch(prompts, max_new_tokens, samplings, batch_size=batch_size, progress=bar.update)
    return [o.text.strip() for o in outs]


def _ask_until(client: JudgeClient, prompt: str, parse, retries: int):
    """(parsed value or None, last reply, attempts)."""
    reply = ""
    for attempt in range(1, retries + 2):
        reply = client.ask(prompt)
        val = parse(reply)
        if val is not None:
            return val, reply, attempt
    return None, reply, retries + 1


def _check(retries: int, concurrency: int) -> None:
    if retries < 0:
        raise GptlabError(f"judge: retries: expected >= 0, got {retries}")
    if concurrency < 1:
        raise GptlabError(f"judge: concurrency: expected a positive number of requests in flight, got {concurrency}")


def in_parallel(fn, n: int, concurrency: int, done=lambda result: None) -> list:
    """[fn(0), ..., fn(n-1)] computed on `concurrency` threads; `done(result)` is called as each finishes. The
    first error is raised once the calls in flight end; calls not yet started are cancelled."""
    out: list = [None] * n
    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        futures = {ex.submit(fn, i): i for i in range(n)}
        try:
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                done(out[futures[f]])
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)
            raise
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def judge_run(
    run_dir: str | Path,
    judge_url: str,
    judge_model: str,
    *,
    data_file: str | Path | None = None,
    n: int | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    api_key_env: str | None = "JUDGE_API_KEY",
    db: str | Path | None = None,
    run_id: str | None = None,
    retries: int = 2,
    timeout: float = 60,
    seed: int = 123,
    device: str = "auto",
    judge_temperature: float = 0.0,
    judge_max_tokens: int | None = None,
    progress: bool = True,
    batch_size: int = 8,
    concurrency: int = 4,
) -> dict:
    """Score a run's answers with an LLM judge, `concurrency` requests in flight. Writes RUN/judge.json; with
    `db` also records the per-item scores in that results.sqlite (run_id: default the run folder's name). `temperature`
    is the answers' (0 = greedy; otherwise sampled with seed + item); the judge is asked at `judge_temperature` (0, as
    the book); answers are generated `batch_size` at a time. Returns the judge.json contents."""
    run_dir = Path(run_dir)
    _check(retries, concurrency)
    records, source = _records(run_dir, data_file, n)
    client = JudgeClient.from_env(
        judge_url,
        judge_model,
        api_key_env,
        temperature=judge_temperature,
        max_tokens=judge_max_tokens,
        timeout=timeout,
        retries=retries,
    )
    answers = generate_answers(
        run_dir,
        records,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        device=device,
        progress=progress,
        desc=f"answers {run_dir.name}",
        batch_size=batch_size,
    )

    def score(i: int) -> dict:
        rec, ans = records[i], answers[i]
        val, reply, attempts = _ask_until(client, score_prompt(rec, ans), parse_score, retries)
        return {
            "item": i,
            "instruction": rec["instruction"],
            "input": rec["input"],
            "reference": rec["output"],
            "response": ans,
            "score": val,
            "judge_reply": reply,
            "attempts": attempts,
        }

    parsed: list[float] = []
    with _progress(progress, len(records), f"judge {judge_model}") as bar:

        def done(item: dict) -> None:
            parsed.extend([item["score"]] if item["score"] is not None else [])
            bar.update(1)
            bar.set_postfix(mean=f"{_mean(parsed):.1f}" if parsed else "-")

        items = in_parallel(score, len(records), concurrency, done)
    rid = run_id or run_dir.resolve().name
    res = {
        "run": str(run_dir),
        "run_id": rid,
        "judge_model": judge_model,
        "judge_url": public_url(client.url),
        "data": source,
        "n": len(items),
        "n_parsed": len(parsed),
        "n_unparsed": len(items) - len(parsed),
        "mean_score": _mean(parsed),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "judge_temperature": judge_temperature,
        "retries": retries,
        "judge_calls": client.calls,
        "seed": seed,
        "time": time.time(),
        "items": items,
    }
    atomic_write_json(run_dir / JUDGE_FILE, res)
    if db is not None:
        record_judge_scores(db, {(rid, judge_model): items})
    return res


def _compare_item(
    client: JudgeClient, i: int, rec: dict, answers: dict[str, list[str]], seed: int, retries: int
) -> dict:
    """One record's row: every model's answer under its label for this item, the judge's scores mapped back."""
    names = list(answers)
    labels = labels_for(len(names))
    label_of = dict(zip(labels, compare_order(names, seed, i), strict=True))
    prompt = compare_prompt(rec, [(lb, answers[nm][i]) for lb, nm in label_of.items()])
    got, reply, attempts = _ask_until(client, prompt, lambda t: parse_compare(t, labels), retries)
    scores = {nm: (got[lb] if got else None) for lb, nm in label_of.items()}
    return {
        "item": i,
        "instruction": rec["instruction"],
        "input": rec["input"],
        "reference": rec["output"],
        "labels": label_of,
        "responses": {nm: answers[nm][i] for nm in names},
        "scores": {nm: scores[nm] for nm in names},
        "judge_reply": reply,
        "attempts": attempts,
    }


def judge_compare(
    run_dirs: dict[str, str | Path],
    judge_url: str,
    judge_model: str,
    *,
    data_file: str | Path | None = None,
    n: int | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    api_key_env: str | None = "JUDGE_API_KEY",
    db: str | Path | None = None,
    retries: int = 2,
    timeout: float = 60,
    seed: int = 123,
    device: str = "auto",
    judge_temperature: float = 0.0,
    judge_max_tokens: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    batch_size: int = 8,
    concurrency: int = 4,
) -> dict:
    """Score several runs' answers side by side (`concurrency` requests in flight): per item ONE prompt with all answers
    under labels A, B, ... in a seeded random order (`compare_order`); the judge's JSON scores are mapped back to the
    run names. Default data: the runs' shared held-out test split. With `db`, per-model scores are recorded under
    run_id = name and judge_model = "<judge_model> [compare]". Returns per-model means and per-item rows
    (and writes them to `out` if given)."""
    if not isinstance(run_dirs, dict) or len(run_dirs) < 2:
        raise GptlabError("judge-compare: give at least two runs (name -> run directory)")
    names = list(run_dirs)
    labels_for(len(names))  # refuses more models than there are labels
    _check(retries, concurrency)
    records, source = _shared_test_split(run_dirs, n) if data_file is None else _records(None, data_file, n)
    client = JudgeClient.from_env(
        judge_url,
        judge_model,
        api_key_env,
        temperature=judge_temperature,
        max_tokens=judge_max_tokens,
        timeout=timeout,
        retries=retries,
    )
    answers = {
        nm: generate_answers(
            run_dirs[nm],
            records,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            device=device,
            progress=progress,
            desc=f"answers {nm}",
            batch_size=batch_size,
        )
        for nm in names
    }
    with _progress(progress, len(records), f"judge {judge_model}") as bar:
        items = in_parallel(
            lambda i: _compare_item(client, i, records[i], answers, seed, retries),
            len(records),
            concurrency,
            lambda _: bar.update(1),
        )
    models = {}
    for nm in names:
        vals = [it["scores"][nm] for it in items if it["scores"][nm] is not None]
        models[nm] = {"run_dir": str(run_dirs[nm]), "mean_score": _mean(vals), "n_parsed": len(vals)}
    res = {
        "judge_model": judge_model,
        "judge_url": public_url(client.url),
        "data": source,
        "n": len(items),
        "n_unparsed": sum(1 for it in items if all(v is None for v in it["scores"].values())),
        "models": models,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "judge_temperature": judge_temperature,
        "retries": retries,
        "judge_calls": client.calls,
        "time": time.time(),
        "items": items,
    }
    if out is not None:
        atomic_write_json(out, res)
    if db is not None:
        record_judge_scores(
            db,
            {
                (nm, f"{judge_model} [compare]"): [
                    {
                        "item": it["item"],
                        "instruction": it["instruction"],
                        "response": it["responses"][nm],
                        "score": it["scores"][nm],
                    }
                    for it in items
                ]
                for nm in names
            },
        )
    return res
