"""Write the bundled offline downstream task `shakespeare_cloze`: HellaSwag's format (ctx / 4 endings / label)
made from the bundled Shakespeare corpus, so `gptlab eval RUN --task shakespeare_cloze` runs the real
lm-evaluation-harness without a network.

Each item: ctx = the line before + the first half of a verse line (8-14 words after a line of 4 or more, no
speaker names or stage directions); the true ending is the rest of that line; the 3 wrong endings are second halves of
other lines of the corpus whose length is within 25% of the true ending's (so a length bias cannot pick the answer), in
a random order. Deterministic: the plays are read in name order, items and endings drawn with random.Random(SEED).

    python benchmarks/make_shakespeare_cloze.py   # rewrites src/gptlab/interop/lm_eval_tasks/shakespeare_cloze.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

from gptlab.data.sources import bundled_files, strip_gutenberg

SEED = 1234
N_ITEMS = 200
OUT = Path(__file__).resolve().parents[1] / "src/gptlab/interop/lm_eval_tasks/shakespeare_cloze.jsonl"


def verse_pairs(text: str) -> list[tuple[str, str]]:
    """(previous line, line) for lines of 8-14 words of plain verse inside a speech."""
    lines = [ln.strip() for ln in text.splitlines()]
    out = []
    for prev, line in zip(lines, lines[1:], strict=False):
        words = line.split()
        if not (8 <= len(words) <= 14) or len(prev.split()) < 4 or prev.isupper() or line.isupper():
            continue
        if re.search(r"[\[\]_]|^[A-Z ]+\.", line + prev):  # stage directions, speaker tags
            continue
        out.append((prev, line))
    return out


def main() -> int:
    rng = random.Random(SEED)
    pairs: list[tuple[str, str, str]] = []
    for src in sorted(bundled_files(), key=lambda s: s.label):
        play = Path(src.label).name.removesuffix("_gut.txt")
        pairs += [(play, p, ln) for p, ln in verse_pairs(strip_gutenberg(src.path.read_text(encoding="utf-8")))]
    halves = []
    for _, _, line in pairs:
        w = line.split()
        halves.append(" ".join(w[len(w) // 2 :]))
    chosen = rng.sample(range(len(pairs)), N_ITEMS)
    items = []
    for i in chosen:
        play, prev, line = pairs[i]
        w = line.split()
        ctx, true = prev + "\n" + " ".join(w[: len(w) // 2]), halves[i]
        similar = [
            j
            for j in range(len(halves))
            if j != i and abs(len(halves[j]) - len(true)) <= 0.25 * len(true) and halves[j] != true
        ]
        wrong = [halves[j] for j in rng.sample(similar, 3)]
        label = rng.randrange(4)
        endings = wrong[:label] + [true] + wrong[label:]
        items.append({"ind": len(items), "source": play, "ctx": ctx, "endings": endings, "label": label})
    OUT.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
    print(f"wrote {len(items)} items from {len(pairs):,} candidate lines to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
