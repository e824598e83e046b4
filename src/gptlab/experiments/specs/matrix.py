"""The planned matrix: every run of a spec with its config resolved once, before anything runs. The runner
(run/runner.py) plans the matrix once and every later stage takes the planned runs: the dry run's plan
(plan.py), the stale-run check (run/changes.py), the data preparation and the jobs written for the runs
(run/session.py, run/matrix.py). Runs added later (the sweep and the tuned matrix of a tuned experiment, the
seeds of a sequential round) are planned when they are added, reusing the runs already planned."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gptlab import GptlabError, config
from gptlab.experiments.specs.experiment import Spec, Variant


@dataclass(frozen=True)
class PlannedRun:
    """One run of the matrix: its variant and seed, its id, the raw table written to configs/RUN_ID.toml (the
    one its `gptlab train` resolves) and that table resolved (config.resolve: the config, its hash, the corpus
    vocabulary where its data is prepared)."""

    variant: Variant
    seed: int
    run_id: str
    raw: dict
    resolved: config.Resolved

    @property
    def cfg(self):
        return self.resolved.cfg


def plan_run(spec: Spec, v: Variant, seed: int, extra: dict, where: str = "") -> PlannedRun:
    """Run `seed` of `v`: spec.raw_config resolved, errors naming `where` (default: the spec file)."""
    raw = spec.raw_config(v, seed, extra)
    return PlannedRun(v, seed, spec.run_id(v.name, seed), raw, config.resolve(raw, where=where or str(spec.path)))


def plan_runs(spec: Spec, extra: dict, known: list[PlannedRun] = ()) -> list[PlannedRun]:
    """Every run of `spec`'s matrix in its order: a run of `known` (same id) as it was planned, the others
    resolved now (a sequential round's new seeds, a tuned experiment's sweep and tuned runs). A known run of
    data.vocab = "corpus" planned before its data was prepared (its model.vocab_size the full vocabulary's) is
    resolved again, as its `gptlab train` will resolve it: the corpus vocabulary's size in, the hash it records."""
    by_id = {p.run_id: p for p in known}
    return [
        _replanned(spec, by_id.get(spec.run_id(v.name, s))) or plan_run(spec, v, s, extra) for v, s in spec.matrix()
    ]


def _replanned(spec: Spec, p: PlannedRun | None) -> PlannedRun | None:
    if p is None or p.resolved.vocab is not None or p.cfg.data.vocab != "corpus":
        return p
    return replace(p, resolved=config.resolve(p.raw, where=str(spec.path)))


def plan_matrix(spec: Spec, extra: dict, only: list[str] | None = None) -> list[PlannedRun]:
    """The matrix of `spec` (with `only`: keep_only's variants) with `extra` (--set) merged in, every run
    resolved once. A config that does not resolve stops it with one line naming the spec file and the variant,
    or, when the spec alone resolves, `--set (variant NAME)`; a variant that --only drops is still checked
    (resolved at its first seed without --set), as is every variant without --set when there is one."""
    variants = list(spec.variants)  # as load_spec read them
    if only:
        keep_only(spec, only)
    dropped = [v for v in variants if v not in spec.variants]
    for v in variants if extra else dropped:  # the spec alone resolves: its errors name the file
        plan_run(spec, v, spec.seeds[0], {}, f"{spec.path}: variant {v.name}")
    return [
        plan_run(spec, v, s, extra, f"--set (variant {v.name})" if extra else f"{spec.path}: variant {v.name}")
        for v, s in spec.matrix()
    ]


def keep_only(spec: Spec, only: list[str]) -> None:
    """--only: drop the other variants, keeping the baseline (every comparison needs it)."""
    names = [v.name for v in spec.variants]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise GptlabError(f"--only: unknown variant '{unknown[0]}'; variants: {', '.join(names)}")
    keep = set(only) | {spec.baseline}
    spec.variants = [v for v in spec.variants if v.name in keep]


@dataclass
class SeqOptions:
    """--until-decided's options, checked against the spec before anything runs (sequential_options): how far
    the sequential rounds (run/rounds.py) may grow the matrix."""

    max_seeds: int
    per_round: int
    family: list[str]  # the variants compared with the baseline (before --only): the Bonferroni family


def sequential_options(
    spec: Spec, until_decided: bool, max_seeds: int | None, per_round: int | None, first_look: int | None = None
) -> SeqOptions | None:
    """--until-decided / --max-seeds / --seeds-per-round / --first-look checked against the spec (before --only
    drops variants: the family is every variant besides the baseline); None without --until-decided."""
    if not until_decided:
        if max_seeds is not None or per_round is not None or first_look is not None:
            raise GptlabError("--max-seeds/--seeds-per-round/--first-look: only with --until-decided")
        return None
    if max_seeds is None:
        raise GptlabError("--until-decided: needs --max-seeds K (the most seeds any variant gets)")
    if first_look is not None and not 2 <= first_look <= max_seeds:
        raise GptlabError(
            f"--first-look: expected 2 to --max-seeds ({max_seeds}) seeds (a t-test needs 2), got {first_look}"
        )
    most = max(len((v.seeds or spec.seeds)[:first_look]) for v in spec.variants)
    if max_seeds < max(2, most):
        raise GptlabError(
            f"--max-seeds: {max_seeds} is below the {max(2, most)} seeds the spec already gives "
            f"a variant (at least 2: a t-test needs them)"
        )
    per_round = per_round if per_round is not None else max(2, len(spec.seeds[:first_look]))
    if per_round < 1:
        raise GptlabError(f"--seeds-per-round: expected at least 1, got {per_round}")
    family = [v.name for v in spec.variants if v.name != spec.baseline]
    if not family:
        raise GptlabError("--until-decided: the spec has no variant besides the baseline to decide")
    return SeqOptions(max_seeds, per_round, family)


def first_seeds(spec: Spec, n: int) -> Spec:
    """--first-look N: the spec with the first N of its seeds and of each variant's own seeds, for the first look
    of --until-decided (the rounds add seeds after them). A fixed-design spec, such as `gptlab ladder
    --emit-confirmation`'s, then runs sequentially as it is."""
    variants = [replace(v, seeds=v.seeds[:n] if v.seeds else v.seeds) for v in spec.variants]
    return replace(spec, seeds=spec.seeds[:n], variants=variants)
