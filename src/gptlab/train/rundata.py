"""The data a run trains and evaluates on: prepared on first use when data.source says from what (`ensure_data`),
then verified, opened and checked against the run before step 1 (`open_run_data`): the eval spec must fit the
test split and the model's vocabulary must hold the data's."""

from __future__ import annotations

from pathlib import Path

from gptlab import GptlabError
from gptlab.config import RunConfig
from gptlab.train.distributed import Dist


def open_run_data(cfg: RunConfig, T: int, vmap):
    """(train, val, test datasets, the train sampler); a changed shard, an eval spec past the end of its split or
    a vocabulary larger than the model's (with no corpus vocabulary map) stops the run here, before training."""
    from gptlab.data.loader import SequenceSampler, TokenDataset
    from gptlab.data.verify import verify_data

    verify_data(cfg.data.dir)  # sha256 of shards not verified before: a changed shard stops the run here
    train_ds = TokenDataset(cfg.data.dir, "train")
    val_ds = TokenDataset(cfg.data.dir, "val")
    sampler = SequenceSampler(train_ds, T, cfg.data_order_seed())
    test_ds = TokenDataset(cfg.data.dir, cfg.eval.split)
    check_eval_spec(cfg, test_ds, T)  # fail before training, not after
    if vmap is None and train_ds.meta.get("vocab_size", 50257) > cfg.model.vocab_size:
        raise GptlabError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the data's vocabulary "
            f"({train_ds.meta['vocab_size']})"
        )
    return train_ds, val_ds, test_ds, sampler


def check_eval_spec(cfg: RunConfig, test_ds, T: int) -> None:
    from gptlab.data.loader import eval_batch_count

    e = cfg.eval
    have = eval_batch_count(test_ds, T, e.batch_size, offset=e.offset)
    if e.batches and e.batches > have:
        raise GptlabError(
            f"eval.batches: the test set spec asks for {e.batches} batches of {e.batch_size} x {T} tokens "
            f"from token {e.offset:,} of the {e.split} split, which has room for {have}"
        )


def ensure_data(cfg: RunConfig, dist_: Dist, progress: bool = True) -> None:
    """Prepare data.dir from data.source (on the main rank, the others wait) when it has no meta.json yet; with
    `progress`, behind a progress bar."""
    meta = Path(cfg.data.dir) / "meta.json"
    if meta.exists():
        return
    if not cfg.data.source:
        raise GptlabError(
            f"data.dir: {cfg.data.dir} has no meta.json; run `gptlab prepare --out {cfg.data.dir}` or set data.source"
        )
    if dist_.enabled:  # the other ranks would wait in a barrier with a timeout while rank 0 tokenises
        raise GptlabError(
            f"data.dir: {cfg.data.dir} has no meta.json; prepare it before a multi-process run: "
            f"gptlab prepare {cfg.data.source.replace(',', ' ')} --out {cfg.data.dir}"
        )
    if dist_.main:
        from gptlab.data.prepare import prepare

        prepare([s.strip() for s in cfg.data.source.split(",")], cfg.data.dir, progress=progress)
    dist_.barrier()
