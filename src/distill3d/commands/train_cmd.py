"""``distill3d train`` and ``distill3d test``.

::

    distill3d train CONFIG [--set k=v ...] [--work-dir DIR] [--resume | --overwrite]
                           [--quiet] [--device cpu|cuda]
    torchrun --nproc-per-node N -m distill3d train CONFIG ...     # the same, on N processes
    distill3d test CONFIG --ckpt PATH [--out DIR] [--split S] [--weights auto|model|ema]

``train`` writes the run folder (``runs/<config name>`` unless ``--work-dir`` or the
config's ``work_dir`` says otherwise): ``config.yaml``, ``checkpoints/``,
``tensorboard/``, ``metrics.jsonl``, ``eval/``, ``train.log``. ``--resume`` continues the
run in that folder from ``checkpoints/last.pth`` (mid-epoch when it was written mid-epoch);
an absent or empty folder then starts a new run, so a pre-emptible job can always pass
``--resume``.

``test`` runs a checkpoint over a split and writes, into ``--out`` (default: the run
folder's ``test/<split>`` when the checkpoint is in a run folder, else
``test_results/<split>``), the official results file (nuScenes ``results_nusc.json`` or
KITTI ``kitti_results/<frame>.txt``) and, where the split has labels, the metrics
(``metrics.json`` plus the evaluator's own summary, ``metrics_summary.json`` or
``kitti_metrics.json``, and the distance breakdown ``metrics_by_distance.json``), computed
by the generic evaluator (:mod:`distill3d.evaluation.evaluator`) as during training.

:func:`run_training` is the whole of ``train`` as a function; ``distill3d distill`` calls it
with its own module factory (a distiller), so that both commands share DDP, resume,
logging and the run folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill3d.commands.config_cmd import add_set_argument
from distill3d.config import dump_config, load_config
from distill3d.config.schema import ExperimentConfig

__all__ = ["register", "run_test", "run_training"]

#: ``factory(config, dist) -> module`` building what is trained (a detector by default).
ModuleFactory = Callable[[ExperimentConfig, Any], Any]


def _default_factory(cfg: ExperimentConfig, dist: Any) -> Any:
    from distill3d.engine.builders import build_model

    return build_model(cfg)


def _prepare_run_dir_on_main(root: Path, dist: Any, *, resume: bool, overwrite: bool, create: bool) -> str | None:
    """:func:`~distill3d.engine.run_dir.prepare_run_dir` on rank 0, its refusal raised on every
    rank (a collective).

    Returns:
        With ``resume`` and ``create``, the checkpoint the run continues from (None: none
        yet, a new run); else None.

    Raises:
        RunDirError: the folder cannot be used (see ``prepare_run_dir``).
    """
    from distill3d.engine.checkpoint import find_last_checkpoint
    from distill3d.engine.distributed import broadcast_object
    from distill3d.engine.run_dir import RunDirError, prepare_run_dir

    error: str | None = None
    resume_path: str | None = None
    if dist.is_main:
        try:
            prepare_run_dir(root, resume=resume, overwrite=overwrite, create=create)
            if resume and create:
                last = find_last_checkpoint(root)
                resume_path = str(last) if last is not None else None
        except RunDirError as exc:
            error = str(exc)
    error, resume_path = broadcast_object((error, resume_path), dist)
    if error:
        raise RunDirError(error)
    return resume_path


def run_training(cfg: ExperimentConfig, *, work_dir: str | None = None, resume: bool = False,
                 overwrite: bool = False, quiet: bool = False, device: str | None = None,
                 module_factory: ModuleFactory | None = None) -> Any:
    """Train ``cfg`` in its run folder, on one process or under torchrun.

    Args:
        cfg: the resolved experiment config.
        work_dir: the run folder (default: the config's ``work_dir`` or ``runs/<name>``).
        resume: continue the run from its last checkpoint (a new run when there is none).
        overwrite: replace an existing run folder.
        quiet: plain log lines instead of a progress bar.
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
        module_factory: builds the module to train (default: the config's detector); a
            distiller's factory builds teacher, student and adapters.

    Returns:
        The :class:`~distill3d.engine.trainer.TrainResult` (on every rank).

    Raises:
        Distill3DError: a refused run folder, bad config, unreadable data, ...
    """
    from distill3d.engine.builders import build_dataset, build_eval_loader, build_evaluator, build_train_loader
    from distill3d.engine.distributed import barrier, cleanup_distributed, init_distributed
    from distill3d.engine.logging import TrainLogger
    from distill3d.engine.run_dir import RunDir, config_differences, default_run_dir
    from distill3d.engine.trainer import Trainer, seed_everything

    dist = init_distributed(device)
    logger = TrainLogger.disabled()
    try:
        root = default_run_dir(cfg, work_dir)
        config_text = dump_config(cfg)
        # only checks: the folder is made once the model is built
        _prepare_run_dir_on_main(root, dist, resume=resume, overwrite=overwrite, create=False)
        if dist.is_main:  # console now; train.log, with these first lines, once the folder exists
            logger = TrainLogger(quiet=quiet, defer_run_dir=True)
        seed_everything(cfg.seed)  # the same initial weights on every rank (DDP broadcasts rank 0's)
        factory = module_factory or _default_factory
        # the model and the data are built before the run folder is made: a config that fails
        # there (a bad term, a missing teacher or data root) leaves no folder behind that the
        # next attempt would need --overwrite for
        model = factory(cfg, dist)
        train_set = build_dataset(cfg, cfg.data.train_split, training=True, dist=dist, log=logger.info)
        configure = getattr(model, "configure_train_dataset", None)
        if callable(configure):  # e.g. a distiller reading a teacher cache fixes the augmentation seeds
            configure(train_set)
        train_loader = build_train_loader(train_set, cfg.train.batch_size, cfg.train.num_workers, cfg.seed, dist)
        split = cfg.train.eval_split or cfg.data.val_split
        val_set = build_dataset(cfg, split, training=False, dist=dist, log=logger.info)
        val_loader = build_eval_loader(val_set, cfg.train.val_batch_size or cfg.train.batch_size,
                                       cfg.train.num_workers, cfg.seed, dist)
        # every rank the same decision; rank 0 reads the GT now, so a split it cannot evaluate fails early
        evaluate_fn = build_evaluator(cfg, split, val_set, dist=dist, log=logger.info)

        # checked again: the folder may have appeared while the model was built
        resume_path = _prepare_run_dir_on_main(root, dist, resume=resume, overwrite=overwrite, create=True)
        run_dir = RunDir(root)
        if dist.is_main:
            logger.open_run_dir(run_dir.root)
            if resume and resume_path is None:
                logger.info(f"--resume: no checkpoint in {run_dir.checkpoints}; starting a new run")
            if resume_path is not None and run_dir.config_path.is_file():
                changes = config_differences(run_dir.config_path.read_text(encoding="utf-8"), config_text)
                if changes:
                    logger.warning("the config differs from the run's config.yaml (the new one is used "
                                   "and written): " + "; ".join(changes))
            run_dir.write_config(config_text)
            logger.info(f"run folder: {run_dir.root.resolve()}")
        if evaluate_fn is None:
            logger.info(f"no evaluator for data.dataset {cfg.data.dataset} split {split!r}: training "
                        "without evaluation (no best.pth)")
        logger.info(f"data: {len(train_set)} training samples ({cfg.data.train_split}), {len(val_set)} "
                    f"evaluation samples ({split})")
        trainer = Trainer(model, cfg.train, train_loader, dist=dist, run_dir=run_dir,
                          val_loader=val_loader if evaluate_fn is not None else None,
                          evaluate_fn=evaluate_fn, logger=logger, seed=cfg.seed, config_text=config_text)
        result = trainer.fit(resume_from=resume_path)
        # every rank reaches this point before any leaves the process group: a rank that
        # tears gloo down while another is still finishing makes the other abort
        barrier(dist)
        if result.best:
            logger.info(f"done: best {result.best['metric']} = {result.best['value']:.4f} at epoch "
                        f"{result.best['epoch']}; checkpoints in {run_dir.checkpoints}")
        else:
            logger.info(f"done: {result.epochs_done} epochs; checkpoints in {run_dir.checkpoints}")
        return result
    finally:
        logger.close()
        cleanup_distributed(dist)


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_training(cfg, work_dir=args.work_dir, resume=args.resume, overwrite=args.overwrite,
                 quiet=args.quiet, device=args.device)
    return 0


def _default_test_dir(ckpt: Path, split: str) -> Path:
    if ckpt.parent.name == "checkpoints" and (ckpt.parent.parent / "config.yaml").is_file():
        return ckpt.parent.parent / "test" / split
    return Path("test_results") / split


def run_test(cfg: ExperimentConfig, ckpt: str | Path, *, out: str | Path | None = None,
             split: str | None = None, device: str | None = None, weights: str = "auto",
             quiet: bool = False, echo: bool = True) -> dict[str, float] | None:
    """Run the checkpoint ``ckpt`` of ``cfg``'s model over ``split`` and write the
    official results file and, where the split has labels, the metrics into ``out``.

    Returns:
        The metrics (rank 0; ``None`` without labels and on other ranks).
    """
    from distill3d.engine.builders import (
        build_dataset,
        build_eval_loader,
        build_evaluator,
        build_model,
        write_results,
    )
    from distill3d.engine.checkpoint import atomic_write_bytes, load_checkpoint
    from distill3d.engine.distributed import cleanup_distributed, default_num_threads, init_distributed
    from distill3d.engine.trainer import gather_predictions, predict, seed_everything, torch_run_settings

    dist = init_distributed(device)
    try:
        split = split or cfg.train.eval_split or cfg.data.val_split
        ckpt_path = Path(ckpt)
        out_dir = Path(out) if out else _default_test_dir(ckpt_path, split)
        say = (lambda text: print(text, file=sys.stderr, flush=True)) if dist.is_main and not quiet else (lambda text: None)
        seed_everything(cfg.seed)
        model = build_model(cfg)
        # a distillation checkpoint holds the whole distiller: test its student
        payload = load_checkpoint(ckpt_path, model, weights=weights, prefix="auto")  # type: ignore[arg-type]
        used = "EMA" if weights != "model" and payload.get("ema") else "trained"
        say(f"loaded {used} weights from {ckpt_path}")
        if cfg.distill is not None and cfg.distill.student_input is not None \
                and cfg.distill.student_input.beam_keep_every > 1:
            from distill3d.distill.distiller import StudentInputDetector

            model = StudentInputDetector(model, cfg.distill.student_input)
            say(f"predicting on the student's distillation input: 1 beam in {cfg.distill.student_input.beam_keep_every}"
                f" of {cfg.distill.student_input.beams} (distill.student_input)")
        dataset = build_dataset(cfg, split, training=False, dist=dist, log=say)
        # every rank (a collective); rank 0 reads the GT before the inference
        evaluator = build_evaluator(cfg, split, dataset, dist=dist, log=say)
        loader = build_eval_loader(dataset, cfg.train.val_batch_size or cfg.train.batch_size,
                                   cfg.train.num_workers, cfg.seed, dist)
        model = model.to(dist.device)
        amp = None
        if cfg.train.amp and dist.device.type == "cuda":
            import torch

            amp = torch.bfloat16 if cfg.train.amp_dtype == "bfloat16" else torch.float16
        say(f"predicting {len(dataset)} samples of split {split!r} on {dist.device}")
        threads = cfg.train.num_threads
        if threads is None and dist.device.type == "cpu" and dist.distributed:
            threads = default_num_threads(dist.local_world_size)
        with torch_run_settings(num_threads=threads, deterministic=False, device=dist.device):
            local = predict(model, loader, dist.device, amp_dtype=amp)
        predictions = gather_predictions(local, dist)
        if not dist.is_main:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics: dict[str, float] | None = None
        if evaluator is not None:
            metrics = {k: float(v) for k, v in evaluator(predictions, out_dir).items()}
            atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
        else:
            write_results(cfg, dataset, predictions, out_dir)
        if metrics is not None and echo:
            for name, value in metrics.items():
                print(f"{name}: {value:.4f}")
        say(f"results written to {out_dir}")
        return metrics
    finally:
        cleanup_distributed(dist)


def _test(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    run_test(cfg, args.ckpt, out=args.out, split=args.split, device=args.device, weights=args.weights,
             quiet=args.quiet)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``test`` verbs."""
    train = subparsers.add_parser(
        "train", help="train a detector",
        description="Train the config's detector. Writes a run folder (config.yaml, checkpoints/, "
                    "tensorboard/, metrics.jsonl, eval/). Run under torchrun --nproc-per-node N -m "
                    "distill3d train ... for N processes (DDP).")
    train.add_argument("config", help="a YAML file or the name of a shipped config")
    add_set_argument(train)
    train.add_argument("--work-dir", metavar="DIR",
                       help="run folder (default: the config's work_dir, else runs/<config name>)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in the run folder from its last checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing run folder (deletes what a run wrote there)")
    train.add_argument("--quiet", action="store_true",
                       help="no progress bar: plain periodic log lines (CI, log files)")
    train.add_argument("--device", choices=["cpu", "cuda"],
                       help="where to train (default: cuda when available, else cpu)")
    train.set_defaults(func=_train)

    test = subparsers.add_parser(
        "test", help="run a checkpoint on a split and write results and metrics",
        description="Run a checkpoint over a split; write the official results file (nuScenes JSON "
                    "or KITTI txt) and the metrics.")
    test.add_argument("config", help="a YAML file or the name of a shipped config")
    add_set_argument(test)
    test.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint to evaluate")
    test.add_argument("--out", metavar="DIR",
                      help="output folder (default: <run folder>/test/<split>, else test_results/<split>)")
    test.add_argument("--split", help="split to run on (default: train.eval_split or data.val_split)")
    test.add_argument("--weights", choices=["auto", "model", "ema"], default="auto",
                      help="auto: the EMA weights when the checkpoint has them (default)")
    test.add_argument("--device", choices=["cpu", "cuda"],
                      help="where to run (default: cuda when available, else cpu)")
    test.add_argument("--quiet", action="store_true", help="only the metrics on stdout")
    test.set_defaults(func=_test)
