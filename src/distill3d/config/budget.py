"""A fixed training budget laid over a config: what the demo and the benchmark tables use to
give every model the same number of epochs (and of steps per epoch) with one evaluation and
one checkpoint at the end."""

from __future__ import annotations

import dataclasses

from distill3d.config.schema import ExperimentConfig


def with_fixed_budget(cfg: ExperimentConfig, epochs: int, *, max_steps_per_epoch: int | None = None,
                      seed: int | None = None, num_threads: int | None = None,
                      cache_dir: str | None = None) -> ExperimentConfig:
    """``cfg`` trained for ``epochs`` epochs, evaluated and checkpointed once at the end.

    Args:
        cfg: the experiment config.
        epochs: the number of epochs.
        max_steps_per_epoch: cut each epoch to this many steps (None: whole epochs).
        seed: the run's seed (None: the config's).
        num_threads: intra-op CPU threads (None: the config's).
        cache_dir: the teacher cache to read (distillation configs only; None: the config's).

    Raises:
        ValueError: ``epochs`` below 1, or a ``cache_dir`` for a config without ``distill``.
    """
    if epochs < 1:
        raise ValueError(f"a training budget needs at least one epoch, got {epochs}")
    train = dataclasses.replace(
        cfg.train, epochs=epochs, eval_interval=epochs, checkpoint_interval=epochs, keep_checkpoints=1,
        max_steps_per_epoch=max_steps_per_epoch,
        num_threads=cfg.train.num_threads if num_threads is None else num_threads)
    cfg = dataclasses.replace(cfg, train=train, seed=cfg.seed if seed is None else seed)
    if cache_dir is not None:
        if cfg.distill is None:
            raise ValueError(f"{cfg.name}: a teacher cache needs a config with a distill section")
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, cache_dir=cache_dir))
    return cfg
