"""with_fixed_budget: one evaluation and one checkpoint at the end of a fixed number of epochs."""

from __future__ import annotations

import pytest

from distill3d.config import load_config, with_fixed_budget


def test_fixed_budget_sets_epochs_evaluation_and_checkpoint_once() -> None:
    cfg = load_config("synthdrive/demo_distill_x0.25")
    out = with_fixed_budget(cfg, 3, max_steps_per_epoch=7, seed=5, num_threads=1, cache_dir="/tmp/cache")
    assert (out.train.epochs, out.train.eval_interval, out.train.checkpoint_interval) == (3, 3, 3)
    assert out.train.keep_checkpoints == 1
    assert out.train.max_steps_per_epoch == 7
    assert out.train.num_threads == 1
    assert out.seed == 5
    assert out.distill is not None and out.distill.cache_dir == "/tmp/cache"
    # everything else is the config's own, and the input is left as it was
    assert out.train.lr == cfg.train.lr and out.model == cfg.model and out.data == cfg.data
    assert cfg == load_config("synthdrive/demo_distill_x0.25")


def test_fixed_budget_keeps_seed_and_threads_when_not_given() -> None:
    cfg = load_config("synthdrive/demo_student_x0.25")
    out = with_fixed_budget(cfg, 2)
    assert out.seed == cfg.seed and out.train.num_threads == cfg.train.num_threads
    assert out.train.max_steps_per_epoch is None


def test_fixed_budget_rejects_bad_requests() -> None:
    cfg = load_config("synthdrive/demo_student_x0.25")
    with pytest.raises(ValueError, match="at least one epoch"):
        with_fixed_budget(cfg, 0)
    with pytest.raises(ValueError, match="distill section"):
        with_fixed_budget(cfg, 2, cache_dir="/tmp/cache")
