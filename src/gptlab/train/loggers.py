"""Where a run's curves go besides metrics.jsonl (always written): TensorBoard, Weights & Biases, Trackio, any
subset of them (`train.loggers`). Each gets every number of every metrics.jsonl row under the row's key (train_loss,
val_loss, lr and lr_muon, grad_norm, tokens_per_s, mfu, lr_scale; not `tokens`, which is the step times the tokens
per step) at the row's step, when the row is written, and the resolved config once (TensorBoard: a text summary and
hparams; W&B and Trackio: the run's config). Only the main rank logs. Each backend is imported when asked for,
with a one-line error naming the extra to install.

Where: a run of an experiment (run folder EXP/runs/RUN_ID, config name "EXP_NAME/RUN_ID", as the experiment runner
writes them) logs TensorBoard events to EXP/tensorboard/RUN_ID (`tensorboard --logdir EXP/tensorboard`: one curve
per run), to W&B with group = experiment name and name = run id, to Trackio in project = experiment name with name
= run id. A plain `gptlab train` run logs to RUN_DIR/tensorboard, to W&B and Trackio in project `train.log_project`
with the run folder's name. W&B writes its files under RUN_DIR/wandb (offline runs: `wandb sync`); Trackio writes
its local database where TRACKIO_DIR says (default ~/.cache/huggingface/trackio; `trackio show`).

Resume: metrics.jsonl drops the rows after the checkpoint and the resumed process writes them again. TensorBoard
does the same (the writer's purge_step: events of those steps from the earlier process are hidden by TensorBoard's
reader). W&B and Trackio cannot drop what they have recorded, so a resumed process skips the steps the earlier one
already sent them (no duplicated step; at those steps they keep the earlier process's values: the same losses for a
resume that continues bit for bit, its own tokens/s and MFU). A run started again from step 0 (no checkpoint, or
an experiment's --rerun-changed) starts a new W&B run (new id) and a new Trackio run, and purges TensorBoard's."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
from pathlib import Path

from gptlab import GptlabError
from gptlab.config import RunConfig, flat
from gptlab.io import first_line

log = logging.getLogger(__name__)

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # logger -> module (= extra)


def require(names: list[str]) -> None:
    """Fail now (one line) if a backend asked for is not installed."""
    for n in names:
        if n in PACKAGES:
            _import(n)


def _import(name: str):
    try:
        return importlib.import_module(PACKAGES[name])
    except ImportError:
        raise GptlabError(
            f"train.loggers: {name} needs the {PACKAGES[name]} package, which is not installed: "
            f"pip install 'gptlab[{name}]'"
        ) from None


@dataclasses.dataclass(frozen=True)
class Place:
    """Where one run's curves go."""

    experiment: str | None  # the experiment's name, None for a plain run
    name: str  # the run's name in W&B and Trackio: its run id / run folder's name
    tensorboard: Path  # its TensorBoard log dir


def place(cfg: RunConfig, run_dir: Path) -> Place:
    run_dir = Path(run_dir)
    exp, _, rid = cfg.name.rpartition("/")
    if exp and rid == run_dir.name and run_dir.parent.name == "runs":  # EXP/runs/RUN_ID, named "EXP_NAME/RUN_ID"
        return Place(exp, rid, tensorboard_dir(run_dir.parent.parent) / rid)
    return Place(None, run_dir.name, run_dir / "tensorboard")


def tensorboard_dir(exp_dir: Path) -> Path:
    """The folder to point `tensorboard --logdir` at for an experiment."""
    return Path(exp_dir) / "tensorboard"


def scalars(row: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl row, by key; the step and tokens (the step times the tokens per step, in
    train and val rows alike) say where, not what."""
    return {
        k: float(v)
        for k, v in row.items()
        if k not in ("step", "tokens") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def run_uid(run_dir: Path) -> str:
    """A W&B run id that stays the same across resumes of one run and changes when the folder starts again from
    step 0 (meta.json's creation time is rewritten then)."""
    meta = json.loads((run_dir / "meta.json").read_text())
    return hashlib.sha256(f"{run_dir.resolve()}\n{meta.get('created')}".encode()).hexdigest()[:16]


def open_loggers(cfg: RunConfig, run_dir: Path, start_step: int, logged_until: int) -> list:
    """The loggers `cfg.train.loggers` asks for besides jsonl, started. `start_step`: the checkpoint the run
    resumes from (0: a fresh start); `logged_until`: the last step an earlier process of this run logged (-1:
    none)."""
    where = place(cfg, run_dir)
    make = {
        "tensorboard": lambda: TensorBoardLogger(cfg, where, start_step),
        "wandb": lambda: WandbLogger(cfg, where, run_dir, logged_until),
        "trackio": lambda: TrackioLogger(cfg, where, start_step, logged_until),
    }
    out: list = []
    try:
        for name in dict.fromkeys(cfg.train.loggers):
            if name in make:
                out.append(make[name]())
    except BaseException:
        close_all(out, ok=False)
        raise
    return out


def close_all(loggers: list, ok: bool) -> None:
    for lg in loggers:
        try:
            lg.close(ok)
        except Exception as e:  # a logger that cannot flush must not hide the run's own outcome
            log.warning(f"{type(lg).__name__}: {e}")


def _hparam(v):
    return v if isinstance(v, (int, float, str, bool)) else str(v)


class TensorBoardLogger:
    def __init__(self, cfg: RunConfig, where: Place, start_step: int):
        _import("tensorboard")
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        where.tensorboard.mkdir(parents=True, exist_ok=True)
        # purge_step: TensorBoard's reader drops the earlier events at and after this step (a resume logs the
        # steps after its checkpoint again; a fresh start, all of them)
        self.w = SummaryWriter(str(where.tensorboard), purge_step=start_step + 1 if start_step else 0, flush_secs=30)
        if not start_step:
            self.w.add_text("config", "```toml\n" + cfg.to_toml() + "```", 0)
            for summary in hparams(
                {k: _hparam(v) for k, v in flat(cfg.to_dict()).items()}, {"val_loss": 0.0, "train_loss": 0.0}
            ):
                self.w.file_writer.add_summary(summary)

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.w.add_scalar(k, v, step)

    def close(self, ok: bool = True) -> None:
        self.w.close()


class WandbLogger:
    def __init__(self, cfg: RunConfig, where: Place, run_dir: Path, logged_until: int):
        wandb = _import("wandb")
        self.skip = logged_until
        try:
            self.run = wandb.init(
                project=cfg.train.log_project,
                group=where.experiment,
                name=where.name,
                id=run_uid(run_dir),
                resume="allow",
                dir=str(run_dir),
                config=cfg.to_dict(),
                settings=wandb.Settings(console="off"),
            )
        except Exception as e:
            raise GptlabError(
                f"train.loggers: wandb could not start the run ({first_line(e)}); log in with "
                f"`wandb login`, or set WANDB_MODE=offline and upload later with `wandb sync`"
            ) from None

    def log(self, step: int, values: dict[str, float]) -> None:
        if step > self.skip:
            self.run.log(values, step=step)

    def close(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class TrackioLogger:
    def __init__(self, cfg: RunConfig, where: Place, start_step: int, logged_until: int):
        trackio = _import("trackio")
        self.skip = logged_until
        try:  # local unless TRACKIO_SPACE_ID / TRACKIO_SERVER_URL say otherwise; no dashboard is launched
            self.run = trackio.init(
                project=where.experiment or cfg.train.log_project,
                name=where.name,
                config=cfg.to_dict(),
                resume="allow" if start_step else "never",
                embed=False,
                auto_log_gpu=False,
                auto_log_cpu=False,
            )
        except Exception as e:
            raise GptlabError(f"train.loggers: trackio could not start the run ({first_line(e)})") from None

    def log(self, step: int, values: dict[str, float]) -> None:
        if step > self.skip:
            self.run.log(values, step=step)

    def close(self, ok: bool = True) -> None:
        self.run.finish()
