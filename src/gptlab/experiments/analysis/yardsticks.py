"""The seed's published yardsticks, in one place, and whether a run's numbers can be set beside them.

The seed (Giles Thomas, "Writing an LLM from scratch", part 32) trained the book's GPT-2 small on FineWeb and
scored every model on one test set: 3,200 batches of 6 x 1,024 tokens read from the validation split starting
at token 50,000,000. Its baseline scored 3.692, its best stack of interventions 3.578, and OpenAI's GPT-2 small
3.500. A loss is only comparable with those when it was measured the same way: same split, offset, number and
size of batches, context, the full GPT-2 vocabulary, on FineWeb. Anything else (the bundled Shakespeare, a
`data.vocab = "corpus"` run, a shorter context) is a different test set: the yardsticks are then orientation only.

gptlab's val split is its own hash split of FineWeb (see data/prepare.py), not the seed's exact tokens, so even a
comparable run is scored on a statistically equivalent sample, not the identical one; to put OpenAI's model on
exactly our tokens, run `gptlab eval --hf-dir /path/to/gpt2 --data DIR --split val --offset 50000000 --batches
3200 --batch-size 6`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptlab import GptlabError


@dataclass(frozen=True)
class Yardstick:
    name: str
    loss: float
    note: str


SEED_BASELINE = 3.692
SEED_BEST_STACK = 3.578
GPT2_SMALL = 3.500

YARDSTICKS: tuple[Yardstick, ...] = (
    Yardstick("seed baseline", SEED_BASELINE, "the seed's GPT-2 small (book GPTModel, 163M) on 3.26B FineWeb tokens"),
    Yardstick(
        "seed best stack",
        SEED_BEST_STACK,
        "the seed's best: grad clip 3.5, no dropout, lr 0.0014 cosine, weight decay 0.01",
    ),
    Yardstick("OpenAI GPT-2 small", GPT2_SMALL, "OpenAI's released 124M model, scored by the seed on its test set"),
)

SEED_TOKENS = 3_260_190_720  # the seed's training budget (~20 tokens per parameter of the 163M model)

# The seed's test set, field by field as gptlab's config names it.
SEED_TEST_SET: dict[str, Any] = {
    "eval.split": "val",
    "eval.offset": 50_000_000,
    "eval.batches": 3200,
    "eval.batch_size": 6,
    "model.context_length": 1024,
    "model.vocab_size": 50257,
    "data.vocab": "gpt2",
    "data": "FineWeb",
}
SEED_TEST_SET_TEXT = "split val, tokens from 50,000,000, 3,200 batches of 6 x 1,024, the full GPT-2 vocabulary, FineWeb"


def _mentions_fineweb(data_dir: str, sources: Any) -> bool:
    """FineWeb if the prepared data's sources (meta.json) or the data folder's name say so."""
    names = [data_dir]
    for s in sources if isinstance(sources, list) else []:
        if isinstance(s, dict):
            names += [str(s.get("hf_dataset") or ""), str(s.get("path") or "")]
    return any("fineweb" in n.lower() for n in names)


def run_test_set(run_dir: str | Path) -> dict[str, Any] | None:
    """The test-set fields of a run (from its config.toml and meta.json), or None if it has no readable config."""
    from gptlab.config import config_from_run

    try:
        cfg = config_from_run(run_dir)
    except (GptlabError, OSError):
        return None
    sources = None
    try:
        sources = json.loads((Path(run_dir) / "meta.json").read_text()).get("data_meta")
    except (OSError, ValueError, AttributeError):
        pass
    return {
        "eval.split": cfg.eval.split,
        "eval.offset": cfg.eval.offset,
        "eval.batches": cfg.eval.batches,
        "eval.batch_size": cfg.eval.batch_size,
        "model.context_length": cfg.model.context_length,
        "model.vocab_size": cfg.model.vocab_size,
        "data.vocab": cfg.data.vocab,
        "data": "FineWeb" if _mentions_fineweb(cfg.data.dir, sources) else f"{cfg.data.dir} (not FineWeb)",
    }


def mismatches(test_set: dict[str, Any]) -> list[str]:
    """'field: ours vs the seed's' for every field where a test set differs from the seed's (empty = the same)."""
    out = []
    for k, want in SEED_TEST_SET.items():
        got = test_set.get(k)
        if got != want:
            fmt = (lambda v: f"{v:,}") if isinstance(want, int) and isinstance(got, int) else repr
            out.append(f"data: {got}" if k == "data" else f"{k} = {fmt(got)} (seed: {fmt(want)})")
    return out


def comparability(test_sets: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Judge a set of runs (run_id -> run_test_set(...) or None). Comparable only when every run is known to
    use the seed's test set. Returns {"comparable": bool, "reasons": [...], "text": one sentence}."""
    if not test_sets:
        return {"comparable": False, "reasons": ["no runs"], "text": "No runs, so nothing to compare."}
    unknown = sorted(r for r, ts in test_sets.items() if ts is None)
    reasons: list[str] = []
    for ts in test_sets.values():
        for m in mismatches(ts) if ts is not None else []:
            if m not in reasons:
                reasons.append(m)
    if unknown:
        reasons.append(
            f"test set not recorded for {len(unknown)} run(s) (no readable config.toml in the run "
            f"directory: {', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''})"
        )
    comparable = not reasons
    if comparable:
        text = (
            f"Comparable: every run was scored on the seed's test set spec ({SEED_TEST_SET_TEXT}). gptlab's "
            f"val split is its own hash split of FineWeb, so the tokens are an equivalent sample rather than "
            f"the seed's exact ones; score OpenAI's GPT-2 on our tokens with `gptlab eval --hf-dir` for an "
            f"exact yardstick."
        )
    else:
        text = (
            f"Not comparable: these runs were scored on a different test set from the seed's "
            f"({SEED_TEST_SET_TEXT}), so the yardsticks below are for orientation only. Differences: "
            f"{'; '.join(reasons)}."
        )
    return {"comparable": comparable, "reasons": reasons, "text": text}
