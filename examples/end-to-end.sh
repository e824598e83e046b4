#!/usr/bin/env bash
# Pretrain -> fine-tune -> serve -> judge -> export, on the tiny CPU setup (a few minutes on 2 cores).
#   bash examples/end-to-end.sh [WORKDIR] [INSTRUCTIONS.json]
# Without INSTRUCTIONS.json a small generated Alpaca-format set is used (a smoke test, not a benchmark); point
# it at the book's instruction-data.json (1,100 records) for a real run. The judge here is our own server
# (its tiny model cannot score, so items are recorded as unparsed); use a real endpoint for real scores, e.g.
#   gptlab judge W/sft --judge-url http://127.0.0.1:11434/v1 --judge-model llama3.1 --db W/results.sqlite
set -euo pipefail
W=${1:-/tmp/gptlab-e2e}
DATA=${2:-}
PORT=${PORT:-8765}
mkdir -p "$W"
# export needs GPT-2's full vocabulary (data.vocab = "gpt2"), so this base run does not use the corpus vocabulary
gptlab train --config configs/tiny-cpu.toml --set data.vocab='"gpt2"' --set model.context_length=256 \
  --set train.tokens=60000 --run-dir "$W/base" --quiet  # context 256: the judge prompt must fit when our own server judges
if [ -z "$DATA" ]; then
  DATA="$W/instructions.json"
  python - "$DATA" <<'PY'
import json, sys
words = ["apple", "river", "stone", "music", "window", "garden", "silver", "candle", "forest", "thunder"]
recs = []
for i, w in enumerate(words * 4):
    k = i % 4
    if k == 0:
        recs.append({"instruction": "Convert the word to uppercase.", "input": w, "output": w.upper()})
    elif k == 1:
        recs.append({"instruction": "Spell the word backwards.", "input": w, "output": w[::-1]})
    elif k == 2:
        recs.append({"instruction": f"Write a short sentence using the word '{w}'.", "input": "",
                     "output": f"The {w} was there in the morning."})
    else:
        recs.append({"instruction": "How many letters does the word have?", "input": w, "output": str(len(w))})
json.dump(recs, open(sys.argv[1], "w"), indent=1)
PY
fi
gptlab finetune "$W/base" --data "$DATA" --out "$W/sft" --epochs 2 --quiet
gptlab serve "$W/sft" --port "$PORT" > "$W/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Spell the word backwards: stone"}],"max_tokens":12}'; echo
gptlab judge "$W/sft" --judge-url "http://127.0.0.1:$PORT/v1" --judge-model self --n 4 --retries 0 \
  --max-new-tokens 16 --judge-max-tokens 8 --db "$W/results.sqlite" --quiet
gptlab export "$W/sft" --out "$W/hf"
python - "$W/hf" <<'PY'
import sys
from transformers import GPT2LMHeadModel, GPT2TokenizerFast
m = GPT2LMHeadModel.from_pretrained(sys.argv[1]); tok = GPT2TokenizerFast.from_pretrained(sys.argv[1])
print("transformers loaded the export:", m.config.n_layer, "layers,", sum(p.numel() for p in m.parameters()), "params;",
      "Hello world ->", tok("Hello world")["input_ids"])
PY
