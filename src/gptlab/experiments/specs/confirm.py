"""The confirmation at the target of a ladder's leads: its settings ([ladder.confirm]) and the experiment spec
`gptlab ladder SPEC --emit-confirmation PATH` writes.

    [ladder.confirm]        # optional; where the confirmation plan's cost is computed (`gptlab plan`'s model)
    gpu = "A100"            # a GPU type of `gptlab plan --gpu-type` with a known price, or give `price`
    gpus = 8                # GPUs per run
    mfu = 0.4               # assumed model FLOPs utilisation
    price = 1.3             # optional: USD per GPU-hour (default: gptlab.plan.PRICE_PER_GPU_HOUR[gpu])

The emitted spec has the target config as its base, the baseline and the leads with their interventions, each
lead with the seeds its fixed-design plan needs (the baseline with the most), the planned design and the ladder's
alpha; its header comment gives the commands to run it and the sequential (`--until-decided`) alternative.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from gptlab import GptlabError
from gptlab.config import read_toml
from gptlab.experiments.specs.experiment import positive_number
from gptlab.experiments.specs.ladder import Ladder

CONFIRM_KEYS = ("gpu", "gpus", "mfu", "price", "min_effect")
MAX_GPUS = 65_536
# The smallest gain worth confirming at the target, nats: the seed's gradient clipping at GPT-2 small (3.692 ->
# 3.678), the size of gain it set out to find. A confirmation is sized for the smaller of this and the screen's Δ.
MIN_EFFECT = 0.014
log = logging.getLogger(__name__)
HEADER = "# confirmation at the target, written by `gptlab ladder --emit-confirmation`"


@dataclass
class ConfirmSettings:
    gpu: str = "A100"  # the seed's 8 x A100
    gpus: int = 8
    mfu: float = 0.4
    price: float | None = None
    min_effect: float = MIN_EFFECT


def confirm_settings(lad: Ladder) -> ConfirmSettings:
    """[ladder.confirm] of the ladder's spec, checked; the defaults without it."""
    from gptlab.plan import PRICE_PER_GPU_HOUR
    from gptlab.train.flops import peak_of

    where = f"{lad.path}: ladder.confirm"
    t = read_toml(lad.path).get("ladder", {}).get("confirm", {})
    if not isinstance(t, dict):
        raise GptlabError(f"{where}: expected a table (gpu, gpus, mfu, price, min_effect), got {t!r}")
    for k in t:
        if k not in CONFIRM_KEYS:
            close = difflib.get_close_matches(k, CONFIRM_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"expected one of {', '.join(CONFIRM_KEYS)}"
            raise GptlabError(f"{where}.{k}: unknown key ({hint})")
    s = ConfirmSettings(**t)
    if not isinstance(s.gpu, str):
        raise GptlabError(f'{where}.gpu: expected a GPU type such as "A100" or "H100", got {s.gpu!r}')
    try:
        peak_of(s.gpu)
    except GptlabError:
        raise GptlabError(
            f"{where}.gpu: unknown GPU type {s.gpu!r}; expected one of {', '.join(PRICE_PER_GPU_HOUR)}"
        ) from None
    if not (isinstance(s.gpus, int) and not isinstance(s.gpus, bool) and 1 <= s.gpus <= MAX_GPUS):
        raise GptlabError(f"{where}.gpus: expected a whole number of GPUs per run from 1 to {MAX_GPUS}, got {s.gpus!r}")
    if not (positive_number(s.mfu) and s.mfu <= 1):
        raise GptlabError(f"{where}.mfu: expected a fraction in (0, 1], got {s.mfu!r}")
    if not (positive_number(s.min_effect) and s.min_effect < 10):
        raise GptlabError(f"{where}.min_effect: expected a gain in nats, above 0 and below 10, got {s.min_effect!r}")
    if s.price is not None and not positive_number(s.price):
        raise GptlabError(f"{where}.price: expected a positive price in USD per GPU-hour, got {s.price!r}")
    if s.price is None and s.gpu.upper().replace(" ", "") not in PRICE_PER_GPU_HOUR:
        raise GptlabError(
            f"{where}.gpu: no price known for {s.gpu!r} (known: {', '.join(PRICE_PER_GPU_HOUR)}); "
            f"give price = USD per GPU-hour"
        )
    return s


def check_target_file(path: str | Path, force: bool = False) -> Path:
    """Refuse a path that exists and is not a spec this command wrote (its first line), unless `force`."""
    p = Path(path)
    if p.is_dir():
        raise GptlabError(f"--emit-confirmation {p}: is a folder; expected a file to write the spec to")
    if p.exists() and not force:
        try:
            with p.open(encoding="utf-8", errors="replace") as f:
                first = f.readline().rstrip("\n")
        except OSError as e:
            raise GptlabError(f"--emit-confirmation {p}: cannot read it ({e.strerror})") from None
        if first != HEADER:
            raise GptlabError(
                f"--emit-confirmation {p}: exists and was not written by `gptlab ladder --emit-confirmation`; "
                f"choose another path or pass --force to overwrite it"
            )
    return p


def confirmation_table(lad: Ladder, plan: dict) -> dict:
    """The spec as a TOML table (`plan`: analysis/confirm.confirm_plan's, with a total), for a file at `path`."""
    spec = lad.spec
    leads = {p["variant"]: p for p in plan["leads"] if p.get("n_fixed")}
    design = plan["total"]["design"]

    def n_of(p: dict) -> int:
        n = p["seeds"][design]
        return n if isinstance(n, int) else p["n_fixed"]

    variants = []
    for v in spec.variants:
        if v.name != spec.baseline and v.name not in leads:
            continue
        d: dict = {"name": v.name, "interventions": list(v.interventions)}
        if v.reference is not None:
            d["reference"] = v.reference
        if v.name in leads:
            d["seeds"] = list(range(1, n_of(leads[v.name]) + 1))
        variants.append(d)
    table: dict = {
        "name": f"{lad.name}-confirm",
        "base": str(lad.target_config),
        "seeds": list(range(1, plan["total"]["seeds"] + 1)),
        "baseline": spec.baseline,
        "design": design,
        "alpha": spec.alpha,
    }
    if spec.equivalence_margin is not None:
        table["equivalence_margin"] = spec.equivalence_margin
    target = read_toml(lad.path)["ladder"]["target"]
    if "tokens" in target:
        table["overrides"] = {"train": {"tokens": int(lad.target_tokens)}}
    table["variants"] = variants
    return table


def write_confirmation(lad: Ladder, plan: dict, path: str | Path, force: bool = False) -> Path:
    """Write the confirmation spec to `path` (atomically), the target config's path relative to it."""
    from gptlab.io import atomic_write_text

    p = check_target_file(path, force)
    if not plan.get("total"):
        raise GptlabError(
            f"--emit-confirmation {p}: no variant of {lad.path} is a lead (Δ < 0 at the largest rung) with a "
            f"plannable confirmation; nothing to write"
        )
    table = confirmation_table(lad, plan)
    try:
        table["base"] = os.path.relpath(lad.target_config, p.resolve().parent)
    except ValueError:  # another drive (Windows): keep it absolute
        pass
    tot, per = plan["total"], plan["per_run"]
    gpus = per["gpus"]
    head = [
        HEADER,
        f"# from the ladder {lad.path}: the baseline and its leads at the target {lad.target_config.name}",
        f"# fixed design: {tot['runs']} runs, {tot['gpu_hours']:,.0f} GPU-hours, ${tot['cost']:,.0f} on "
        f"{gpus}x {per['gpu_type']} (`gptlab plan`'s model at {per['mfu']:.0%} MFU)",
        f"#   gptlab experiment {p} --gpus-per-run {gpus}          (or --backend slurm --gpus-per-node {gpus})",
        f"# sequential alternative (stops a variant once decided, at most {tot['max_seeds']} seeds each):",
        f"#   gptlab experiment {p} --gpus-per-run {gpus} --until-decided --first-look {tot['seeds_per_round']} "
        f"--max-seeds {tot['max_seeds']} --seeds-per-round {tot['seeds_per_round']}",
    ]
    atomic_write_text(p, "\n".join(head) + "\n" + tomli_w.dumps(table))
    log.info(f"confirmation spec: {p} ({tot['runs']} runs, ${tot['cost']:,.0f}): gptlab experiment {p}")
    return p
