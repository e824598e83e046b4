"""LLM-as-a-judge, as in chapter 7 of Raschka's book: generate a run's answers to held-out instructions, then
ask any OpenAI-compatible chat endpoint (a hosted API, a local Ollama/vLLM/llama.cpp server, or another
`gptlab serve`) to score each answer from 0 to 100 against the reference output.

`judge_run` uses the book's scoring prompt verbatim:

    Given the input `{format_input(entry)}` and correct output `{output}`, score the model response
    `{response}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.

and parses the first number in [0, 100] from the reply; a reply without one is asked again `retries` times and
then recorded as unparsed (score None, left out of the mean). Transport failures (refused connections,
timeouts, HTTP 429/5xx) are retried with back-off and then stop the run with an error; other HTTP errors
(401, 400, ...) stop it at once.

`judge_compare` scores several runs' answers to the same instruction in ONE prompt, under neutral labels
A, B, C ... in an order shuffled per item with a fixed seed (so no model always sits first: position bias
averages out, and the order is reproducible); the judge answers with a JSON object {"A": score, ...}.

Answers are deterministic: greedy decoding at temperature 0 (sampling with seed + item otherwise), dropout off.
The API key is read from an environment variable (JUDGE_API_KEY by default), sent as a Bearer token, and never
written anywhere.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from gptlab import GptlabError
from gptlab.io import atomic_write_json
from gptlab.posttrain.instructions import (
    TEST_FILE,
    format_input,
    format_prompt,
    load_records,
)

JUDGE_FILE = "judge.json"
MAX_LABELS = 26


# --------------------------------------------------------------------------------------------
# Prompts and parsing
# --------------------------------------------------------------------------------------------


def score_prompt(record: dict, response: str) -> str:
    """The book's chapter 7 scoring prompt."""
    return (f"Given the input `{format_input(record)}` "
            f"and correct output `{record['output']}`, "
            f"score the model response `{response}`"
            f" on a scale from 0 to 100, where 100 is the best score. "
            f"Respond with the integer number only.")


def compare_prompt(record: dict, labelled: list[tuple[str, str]]) -> str:
    """One prompt with every model's answer under a neutral label; asks for a JSON object of scores."""
    body = "\n\n".join(f"Response {label}: `{resp}`" for label, resp in labelled)
    shape = ", ".join(f'"{label}": <score>' for label, _ in labelled)
    return (f"Given the input `{format_input(record)}` "
            f"and correct output `{record['output']}`, "
            f"score each of the following model responses on a scale from 0 to 100, where 100 is the best score.\n\n"
            f"{body}\n\n"
            f"Respond with a JSON object only, mapping each response label to its integer score: {{{shape}}}")


_NUM = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)")


def parse_score(text: str | None) -> float | None:
    """The first number in [0, 100] in the judge's reply ("85", "Score: 85", "85/100", "**85**"), else None."""
    if not text:
        return None
    for m in _NUM.finditer(text):
        v = float(m.group())
        if 0 <= v <= 100:
            return v
    return None


def _num(v) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip().rstrip("%"))
        except ValueError:
            return None
    return None


def _label_key(k) -> str:
    return re.sub(r"^(response|model|answer)\s*", "", str(k).strip(), flags=re.I).strip().upper()


def parse_compare(text: str | None, labels: list[str]) -> dict[str, float] | None:
    """{label: score} for every label, all in [0, 100], from the first JSON object in the reply that has them
    (code fences, prose around it, "Response A" keys and numeric strings are tolerated); else None."""
    if not text:
        return None
    dec = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, _ = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            got = {_label_key(k): _num(v) for k, v in obj.items()}
            if all(got.get(lb) is not None and 0 <= got[lb] <= 100 for lb in labels):
                return {lb: got[lb] for lb in labels}
        i = text.find("{", i + 1)
    # fallback: A: 70, "B"=40 ... (single-quoted dicts, plain lists)
    out = {}
    for lb in labels:
        m = re.search(rf"(?<![\w])(?:response\s*)?['\"]?{lb}['\"]?\s*[:=]\s*['\"]?(\d+(?:\.\d+)?)", text, flags=re.I)
        if not m or not 0 <= float(m.group(1)) <= 100:
            return None
        out[lb] = float(m.group(1))
    return out


def compare_order(names: list[str], seed: int, item: int) -> list[str]:
    """The models in label order (A first) for one item: a shuffle seeded by (seed, item)."""
    order = list(names)
    random.Random(seed * 1_000_003 + item).shuffle(order)
    return order


def labels_for(n: int) -> list[str]:
    if n > MAX_LABELS:
        raise GptlabError(f"judge: at most {MAX_LABELS} models can be compared in one prompt, got {n}")
    return [chr(ord("A") + i) for i in range(n)]


# --------------------------------------------------------------------------------------------
# The judge endpoint
# --------------------------------------------------------------------------------------------


def chat_url(judge_url: str) -> str:
    """.../chat/completions as given; a base URL ending in /v1 gets /chat/completions; any other base gets
    /v1/chat/completions."""
    parts = urlsplit(judge_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GptlabError(f"judge_url: expected an http(s) URL such as http://127.0.0.1:8000/v1, got {judge_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _public_url(url: str) -> str:
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host += f":{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


class JudgeClient:
    """POSTs one user message to an OpenAI-compatible chat endpoint and returns the reply's text."""

    def __init__(self, judge_url: str, judge_model: str, *, api_key: str | None = None, temperature: float = 0.0,
                 max_tokens: int | None = None, timeout: float = 60, retries: int = 2, backoff: float = 1.0):
        self.url, self.model, self._key = chat_url(judge_url), judge_model, api_key
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.retries, self.backoff = retries, backoff
        self.calls = 0

    def ask(self, content: str) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature}
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        where = _public_url(self.url)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))
            self.calls += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    raw = r.read()
            except urllib.error.HTTPError as e:
                msg = _error_message(e)
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {msg}"
                    continue
                raise GptlabError(f"judge {where}: HTTP {e.code}: {msg}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", e))
                continue
            try:
                reply = json.loads(raw.decode("utf-8"))
                msg = reply["choices"][0]["message"]
                text = msg.get("content")
                if isinstance(text, list):  # content parts
                    text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
                return text or ""
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
                raise GptlabError(f"judge {where}: the reply is not an OpenAI chat completion "
                                  f"({raw[:120]!r})") from None
        raise GptlabError(f"judge {where}: no answer after {self.retries + 1} attempt(s) ({last})")


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = e.read()
        return str(json.loads(body)["error"]["message"])[:200]
    except Exception:  # noqa: BLE001 - any body: fall back to the reason
        return str(e.reason)[:200]


def _client(judge_url, judge_model, api_key_env, temperature, judge_max_tokens, timeout, retries) -> JudgeClient:
    key = os.environ.get(api_key_env) if api_key_env else None
    return JudgeClient(judge_url, judge_model, api_key=key or None, temperature=temperature,
                       max_tokens=judge_max_tokens, timeout=timeout, retries=retries)


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def _records(run_dir: Path | None, data_file, n: int | None) -> tuple[list[dict], str]:
    if data_file is not None:
        recs, src = load_records(data_file), str(data_file)
    else:
        p = Path(run_dir) / TEST_FILE
        if not p.is_file():
            raise GptlabError(f"{run_dir}: no held-out test split ({TEST_FILE}; only `gptlab finetune` runs have "
                              f"one); pass --data FILE.json")
        recs, src = load_records(p), f"{run_dir} test split"
    if n is not None:
        if n < 1:
            raise GptlabError(f"judge: n: expected a positive number of items, got {n}")
        recs = recs[:n]
    return recs, src


def generate_answers(run_dir: str | Path, records: list[dict], *, max_new_tokens: int = 256,
                     temperature: float = 0.0, seed: int = 123, device: str = "auto", progress: bool = False,
                     desc: str = "answers") -> list[str]:
    """The run's answer to each record (the text after "### Response:" up to <|endoftext|>, stripped)."""
    from gptlab.posttrain.generate import Generator, Sampling

    gen = Generator.from_run(run_dir, device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=desc, unit="item", dynamic_ncols=True, file=sys.stderr)
    out = []
    try:
        for i, rec in enumerate(records):
            sampling = Sampling(temperature, seed=(seed + i) if temperature > 0 else None)
            out.append(gen.complete(gen.encode(format_prompt(rec)), max_new_tokens, sampling).text.strip())
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    return out


def _ask_until(client: JudgeClient, prompt: str, parse, retries: int):
    """(parsed value or None, last reply, attempts)."""
    reply = ""
    for attempt in range(1, retries + 2):
        reply = client.ask(prompt)
        val = parse(reply)
        if val is not None:
            return val, reply, attempt
    return None, reply, retries + 1


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------------------------
# judge_run / judge_compare
# --------------------------------------------------------------------------------------------


def judge_run(run_dir: str | Path, judge_url: str, judge_model: str, *, data_file: str | Path | None = None,
              n: int | None = None, max_new_tokens: int = 256, temperature: float = 0.0,
              api_key_env: str | None = "JUDGE_API_KEY", db: str | Path | None = None, run_id: str | None = None,
              retries: int = 2, timeout: float = 60, seed: int = 123, device: str = "auto",
              judge_temperature: float = 0.0, judge_max_tokens: int | None = None, progress: bool = True) -> dict:
    """Score a run's answers with an LLM judge. Writes RUN/judge.json; with `db` also records the per-item
    scores in that results.sqlite (run_id: default the run folder's name). `temperature` is the answers'
    (0 = greedy; otherwise sampled with seed + item); the judge is asked at `judge_temperature` (0, as the
    book). Returns the judge.json contents."""
    from gptlab.experiments.results import ResultsDB

    run_dir = Path(run_dir)
    if retries < 0:
        raise GptlabError(f"judge: retries: expected >= 0, got {retries}")
    records, source = _records(run_dir, data_file, n)
    client = _client(judge_url, judge_model, api_key_env, judge_temperature, judge_max_tokens, timeout, retries)
    answers = generate_answers(run_dir, records, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                               device=device, progress=progress, desc=f"answers {run_dir.name}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"judge {judge_model}", unit="item", dynamic_ncols=True, file=sys.stderr)
    items = []
    try:
        for i, (rec, ans) in enumerate(zip(records, answers)):
            score, reply, attempts = _ask_until(client, score_prompt(rec, ans), parse_score, retries)
            items.append({"item": i, "instruction": rec["instruction"], "input": rec["input"],
                          "reference": rec["output"], "response": ans, "score": score, "judge_reply": reply,
                          "attempts": attempts})
            if bar:
                bar.update(1)
                parsed = [it["score"] for it in items if it["score"] is not None]
                bar.set_postfix(mean=f"{_mean(parsed):.1f}" if parsed else "-")
    finally:
        if bar:
            bar.close()
    parsed = [it["score"] for it in items if it["score"] is not None]
    rid = run_id or run_dir.resolve().name
    res = {"run": str(run_dir), "run_id": rid, "judge_model": judge_model, "judge_url": _public_url(client.url),
           "data": source, "n": len(items), "n_parsed": len(parsed), "n_unparsed": len(items) - len(parsed),
           "mean_score": _mean(parsed), "max_new_tokens": max_new_tokens, "temperature": temperature,
           "judge_temperature": judge_temperature,
           "retries": retries, "judge_calls": client.calls, "seed": seed, "time": time.time(), "items": items}
    atomic_write_json(run_dir / JUDGE_FILE, res)
    if db is not None:
        with ResultsDB(db) as rdb:
            rdb.record_judge(rid, judge_model, items)
    return res


def judge_compare(run_dirs: dict[str, str | Path], judge_url: str, judge_model: str, *,
                  data_file: str | Path | None = None, n: int | None = None, max_new_tokens: int = 256,
                  temperature: float = 0.0, api_key_env: str | None = "JUDGE_API_KEY", db: str | Path | None = None,
                  retries: int = 2, timeout: float = 60, seed: int = 123, device: str = "auto",
                  judge_temperature: float = 0.0, judge_max_tokens: int | None = None, out: str | Path | None = None,
                  progress: bool = True) -> dict:
    """Score several runs' answers side by side: per item ONE prompt with all answers under labels A, B, ...
    in a seeded random order (`compare_order`); the judge's JSON scores are mapped back to the run names.
    Default data: the runs' shared held-out test split. With `db`, per-model scores are recorded under
    run_id = name and judge_model = "<judge_model> [compare]". Returns per-model means and per-item rows
    (and writes them to `out` if given)."""
    from gptlab.experiments.results import ResultsDB

    if not isinstance(run_dirs, dict) or len(run_dirs) < 2:
        raise GptlabError("judge-compare: give at least two runs (name -> run directory)")
    names = list(run_dirs)
    labels = labels_for(len(names))
    if retries < 0:
        raise GptlabError(f"judge: retries: expected >= 0, got {retries}")
    if data_file is None:
        with_split = [nm for nm in names if (Path(run_dirs[nm]) / TEST_FILE).is_file()]
        if not with_split:
            raise GptlabError(f"judge-compare: none of the runs has a held-out test split ({TEST_FILE}); "
                              f"pass --data FILE.json")
        first = load_records(Path(run_dirs[with_split[0]]) / TEST_FILE)
        for nm in with_split[1:]:
            if load_records(Path(run_dirs[nm]) / TEST_FILE) != first:
                raise GptlabError(f"judge-compare: runs {with_split[0]} and {nm} hold out different test splits "
                                  f"(one's test items may be the other's training data); pass --data FILE.json")
        records, source = _records(Path(run_dirs[with_split[0]]), None, n)
    else:
        records, source = _records(None, data_file, n)
    client = _client(judge_url, judge_model, api_key_env, judge_temperature, judge_max_tokens, timeout, retries)
    answers = {nm: generate_answers(run_dirs[nm], records, max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=seed, device=device,
                                    progress=progress, desc=f"answers {nm}") for nm in names}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"judge {judge_model}", unit="item", dynamic_ncols=True, file=sys.stderr)
    items = []
    try:
        for i, rec in enumerate(records):
            order = compare_order(names, seed, i)
            label_of = dict(zip(labels, order))
            prompt = compare_prompt(rec, [(lb, answers[nm][i]) for lb, nm in label_of.items()])
            got, reply, attempts = _ask_until(client, prompt, lambda t: parse_compare(t, labels), retries)
            scores = {nm: (got[lb] if got else None) for lb, nm in label_of.items()}
            items.append({"item": i, "instruction": rec["instruction"], "input": rec["input"],
                          "reference": rec["output"], "labels": label_of,
                          "responses": {nm: answers[nm][i] for nm in names},
                          "scores": {nm: scores[nm] for nm in names}, "judge_reply": reply, "attempts": attempts})
            if bar:
                bar.update(1)
    finally:
        if bar:
            bar.close()
    models = {}
    for nm in names:
        vals = [it["scores"][nm] for it in items if it["scores"][nm] is not None]
        models[nm] = {"run_dir": str(run_dirs[nm]), "mean_score": _mean(vals), "n_parsed": len(vals)}
    res = {"judge_model": judge_model, "judge_url": _public_url(client.url), "data": source, "n": len(items),
           "n_unparsed": sum(1 for it in items if all(v is None for v in it["scores"].values())),
           "models": models, "seed": seed, "max_new_tokens": max_new_tokens, "temperature": temperature,
           "judge_temperature": judge_temperature,
           "retries": retries, "judge_calls": client.calls, "time": time.time(), "items": items}
    if out is not None:
        atomic_write_json(out, res)
    if db is not None:
        with ResultsDB(db) as rdb:
            for nm in names:
                rdb.record_judge(nm, f"{judge_model} [compare]",
                                 [{"item": it["item"], "instruction": it["instruction"],
                                   "response": it["responses"][nm], "score": it["scores"][nm]} for it in items])
    return res


__all__ = ["judge_run", "judge_compare", "parse_score", "parse_compare", "compare_order", "score_prompt",
           "compare_prompt", "chat_url", "JudgeClient", "generate_answers", ]
