"""The judge's prompts and how its replies are read.

`score_prompt` is the book's chapter 7 scoring prompt, verbatim:

    Given the input `{format_input(entry)}` and correct output `{output}`, score the model response
    `{response}` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.

and `parse_score` reads the first number in [0, 100] from the reply. `compare_prompt` puts several models'
answers under neutral labels A, B, C ... in one prompt (`compare_order` shuffles them per item with a fixed
seed) and `parse_compare` reads the JSON object {"A": score, ...} the judge answers with.
"""

from __future__ import annotations

import json
import random
import re

from gptlab import GptlabError
from gptlab.posttrain.instructions import format_input

MAX_LABELS = 26


def score_prompt(record: dict, response: str) -> str:
    """The book's chapter 7 scoring prompt."""
    return (
        f"Given the input `{format_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"score the model response `{response}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def compare_prompt(record: dict, labelled: list[tuple[str, str]]) -> str:
    """One prompt with every model's answer under a neutral label; asks for a JSON object of scores."""
    body = "\n\n".join(f"Response {label}: `{resp}`" for label, resp in labelled)
    shape = ", ".join(f'"{label}": <score>' for label, _ in labelled)
    return (
        f"Given the input `{format_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"score each of the following model responses on a scale from 0 to 100, where 100 is the best score.\n\n"
        f"{body}\n\n"
        f"Respond with a JSON object only, mapping each response label to its integer score: {{{shape}}}"
    )


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
