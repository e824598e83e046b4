#!/usr/bin/env bash
# The checks a lent GPU should run first, in one go (about 6-8 minutes on one H100), ending with a table.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root, after the install
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same steps at toy sizes on a CPU: checks this script only
#
# Steps (each under its own time limit; a failing step is reported and the others still run):
#   1. mfu        gpt2-small, context 1024, bf16 autocast + torch.compile + fused AdamW, micro-batch 16:
#                 tokens/s and MFU (benchmarks/mfu.py; target >= 45% on an H100)
#   2. fp16       `gptlab train`, 50 steps (5 in the CPU smoke run: CPU fp16 is slow) of fp16 autocast with a GradScaler: no non-finite loss, no skipped batch
#   3. slots      a 2-variant experiment, 2 runs at once on the one GPU (`gptlab experiment --parallel 2`)
#   4. memory     peak memory of gpt2-small and nano training steps vs `gptlab plan`'s formula (benchmarks/memory.py)
#   5. ddp_compile   torch.compile + activation checkpointing under DDP, 2 GPUs (skipped with one)
#   6. fsdp_compile  the same under FSDP2 with bf16 MixedPrecisionPolicy, compile after fully_shard (skipped with one)
# Outputs land in $OUT (default gpu_check_out/); copy the table into benchmarks/results/gpu_check_<gpu>.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if [ "${1:-}" = "--cpu-smoke" ]; then
  MODE=cpu; DEVICE=cpu; PRESET=nano; MB=4; STEPS=3; WARMUP=1; COMPILE=--no-compile; FP16_TOKENS=$((5 * 16 * 64))
  MEM_CASES=nano:4; SLOT_TOKENS=4096
else
  MODE=gpu; DEVICE=cuda; PRESET=gpt2-small; MB=16; STEPS=20; WARMUP=5; COMPILE=--compile; FP16_TOKENS=$((50 * 16 * 64))
  MEM_CASES=gpt2-small:8:1,nano:16; SLOT_TOKENS=200000
fi
PY=${PYTHON:-python}
declare -a NAMES STATUS SECS

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$OUT/gpu_check.log"
  if timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then STATUS+=(ok); else STATUS+=("FAIL($?)"); fi
  NAMES+=("$name"); SECS+=($((SECONDS - t0)))
  tail -n 5 "$OUT/$name.log" | tee -a "$OUT/gpu_check.log"
}

$PY - <<'PY' | tee "$OUT/env.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
PY

step mfu 240 $PY benchmarks/mfu.py --preset "$PRESET" --device "$DEVICE" $COMPILE --micro-batch "$MB" \
  --steps "$STEPS" --warmup "$WARMUP" --json "$OUT/mfu.json"

[ -f data/shakespeare/meta.json ] || $PY -m gptlab prepare --out data/shakespeare --quiet >"$OUT/prepare.log" 2>&1
step fp16 180 $PY -m gptlab train --config configs/tiny-cpu.toml --run-dir "$OUT/fp16-run" --quiet \
  --set train.device=\""$DEVICE"\" --set train.precision=\"fp16\" --set train.tokens=$FP16_TOKENS \
  --set train.nan_policy=\"stop\"

cat >"$OUT/slots.toml" <<TOML
name = "gpu-check-slots"
base = "$(pwd)/configs/tiny-cpu.toml"
seeds = [1]
baseline = "baseline"
[[variants]]
name = "baseline"
interventions = []
[[variants]]
name = "no_dropout"
interventions = ["no_dropout"]
TOML
step slots 180 $PY -m gptlab experiment "$OUT/slots.toml" --out "$OUT/slots" --parallel 2 --quiet \
  --set train.tokens=$SLOT_TOKENS --set train.device=\""$DEVICE"\"

step memory 240 $PY benchmarks/memory.py --device "$DEVICE" --cases "$MEM_CASES" --timeout 200

NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
for mode in ddp fsdp; do
  if [ "$MODE" = gpu ] && [ "$NGPU" -lt 2 ]; then
    NAMES+=("${mode}_compile"); STATUS+=("skipped(${NGPU}gpu)"); SECS+=(0); continue
  fi
  step "${mode}_compile" 240 $PY -m torch.distributed.run --standalone --nproc_per_node 2 -m gptlab train \
    --config configs/tiny-cpu.toml --run-dir "$OUT/${mode}-compile-run" --quiet --set train.device=\""$DEVICE"\" \
    --set train.compile=$([ "$MODE" = gpu ] && echo true || echo false) --set train.activation_checkpointing=true \
    --set train.fsdp=$([ "$mode" = fsdp ] && echo true || echo false) --set train.tokens=$((40 * 16 * 64)) \
    --set train.micro_batch_size=4
done

$PY - "$OUT" "${NAMES[*]}" "${STATUS[*]}" "${SECS[*]}" <<'PY' | tee "$OUT/table.md"
import json, re, sys
from pathlib import Path
out, names, status, secs = Path(sys.argv[1]), *[s.split() for s in sys.argv[2:5]]
def detail(name):
    try:
        if name == "mfu":
            r = json.loads((out / "mfu.json").read_text())
            return f"{r.get('tokens_per_s', 0):,.0f} tok/s, MFU {100 * (r.get('mfu') or 0):.1f}%"
        if name == "fp16":
            f = json.loads((out / "fp16-run" / "final.json").read_text())
            return f"test {f['test_loss']:.3f}, skipped batches {f['skipped_batches']}, {f['precision']}"
        if name == "slots":
            lines = (out / "slots.log").read_text().splitlines()
            return "; ".join(l.split("]")[1].strip()[:60] for l in lines if l.startswith("[") and "test" in l)
        if name.endswith("_compile"):
            f = json.loads((out / f"{name.split('_')[0]}-compile-run" / "final.json").read_text())
            return f"world {f['world_size']}, test {f['test_loss']:.3f}, {f['tokens_per_s']:,.0f} tok/s"
        if name == "memory":
            rows = [l for l in (out / "memory.log").read_text().splitlines() if re.match(r"[\w-]+:\d+ accum", l)]
            return "; ".join(" ".join(l.split()[:10]) for l in rows)
    except Exception as e:  # a failed step leaves no output to read
        return f"(no result: {type(e).__name__})"
print("| step | status | seconds | result |\n|---|---|---:|---|")
for n, s, t in zip(names, status, secs):
    print(f"| {n} | {s} | {t} | {detail(n)} |")
PY
