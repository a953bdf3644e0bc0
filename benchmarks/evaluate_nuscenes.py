"""Benchmark of the nuScenes detection evaluation: ours against the official devkit.

Both evaluate the same results file on the same SynthDrive data (``v1.0-trainval``, split
``train``: 27 scenes x 40 keyframes = 1,080 samples by default), generated once into a
cache folder under ``/tmp`` (no sweeps, 64x32 images) and reused by later runs. The
predictions are derived from the GT: ~85 % of the boxes with centre/size/yaw/velocity noise,
30 % duplicated, 10 % with a wrong class, random scores, plus false positives.

Phases, each timed separately (median of ``--repeats`` runs):

* ``load GT``: devkit ``NuScenes(...)`` + ``load_gt`` + ``add_center_dist`` +
  ``filter_eval_boxes`` of the GT; ours :func:`load_nuscenes_gt` cold (``cache=False``:
  tables read and GT built; our filtering runs inside the metric phase) and from its
  cache (what every evaluation after the first one of a dataset does).
* ``load results``: devkit ``load_prediction`` + ``add_center_dist`` +
  ``filter_eval_boxes`` of the predictions; ours :func:`load_nuscenes_results` (read and
  validated).
* ``metrics``: devkit ``DetectionEval.evaluate`` (matching, curves, AP, TP errors); ours
  :func:`evaluate_nuscenes` (filtering of GT and predictions included).

Every metric of the two summaries is compared and the largest absolute difference printed.

Usage::

    python benchmarks/evaluate_nuscenes.py [--repeats 3] [--cache-dir /tmp/distill3d-bench-cache]
        [--scenes 32] [--samples-per-scene 40] [--fp-per-sample 40] [--seed 0] [--no-devkit]

``main()`` is importable (``benchmarks/evaluate.py`` calls it); :func:`run` returns the
figures as a dict.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill3d.data.nuscenes import NUSCENES_DETECTION_CLASSES
from distill3d.evaluation.nuscenes import (
    NuScenesGT,
    default_attribute,
    evaluate_nuscenes,
    evaluate_nuscenes_by_distance,
    load_nuscenes_gt,
    load_nuscenes_results,
    write_nuscenes_results,
)

VERSION = "v1.0-trainval"
META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
        "use_external": False}


# ----------------------------------------------------------------------------- data


def ensure_dataset(cache_dir: Path, scenes: int, samples_per_scene: int, seed: int) -> Path:
    """The SynthDrive nuScenes set of these parameters under ``cache_dir``, generated on the
    first call (several minutes) and reused afterwards."""
    from distill3d.synth.generate import generate_dataset

    root = cache_dir / f"nuscenes-eval-small-s{scenes}x{samples_per_scene}-seed{seed}"
    manifest = root / "synthdrive.json"
    wanted = {"preset": "small", "scenes": scenes, "samples_per_scene": samples_per_scene,
              "seed": seed, "sweeps": 0, "image_size": [64, 32]}
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            found = {}
        if all(found.get(k) == v for k, v in wanted.items()):
            return root
    print(f"generating the SynthDrive set once into {root} (several minutes) ...", flush=True)
    tic = time.perf_counter()
    generate_dataset("nuscenes", root, preset="small", scenes=scenes,
                     samples_per_scene=samples_per_scene, sweeps=0, image_size=(64, 32),
                     seed=seed, workers=1, overwrite=True, progress=False)
    print(f"generated in {time.perf_counter() - tic:.0f} s", flush=True)
    return root


def make_results(gt: NuScenesGT, seed: int, fp_per_sample: int) -> dict[str, list[dict[str, Any]]]:
    """Noisy predictions derived from the GT, in the submission format."""
    rng = np.random.default_rng(seed)
    n = len(gt)
    keep = np.flatnonzero(rng.random(n) > 0.15)
    src = np.concatenate((keep, keep[rng.random(keep.size) < 0.3]))
    m = src.size
    centre = gt.translation[src] + np.column_stack((
        rng.normal(0, 1, (m, 2)) * rng.choice([0.05, 0.4, 1.2, 3.0], (m, 1)), rng.normal(0, 0.2, m)))
    size = gt.size[src] * np.exp(rng.normal(0, 0.15, (m, 3)))
    dyaw = rng.normal(0, 0.4, m) + np.where(rng.random(m) < 0.1, np.pi, 0.0)
    q = gt.rotation[src]
    c, s = np.cos(dyaw / 2), np.sin(dyaw / 2)   # rotate about global z: (c, 0, 0, s) * q
    rotation = np.column_stack((c * q[:, 0] - s * q[:, 3], c * q[:, 1] - s * q[:, 2],
                                c * q[:, 2] + s * q[:, 1], c * q[:, 3] + s * q[:, 0]))
    velocity = np.nan_to_num(gt.velocity[src]) + rng.normal(0, 0.6, (m, 2))
    velocity[rng.random(m) < 0.1] = np.nan
    label = np.where(rng.random(m) < 0.1, rng.integers(0, 10, m), gt.label[src])
    sample = gt.sample_index[src]
    # false positives around the ego vehicle
    f = fp_per_sample * len(gt.sample_tokens)
    f_sample = np.repeat(np.arange(len(gt.sample_tokens)), fp_per_sample)
    f_centre = gt.ego_translation[f_sample] + np.column_stack((rng.uniform(-60, 60, (f, 2)),
                                                               rng.normal(1, 1, f)))
    f_yaw = rng.uniform(-np.pi, np.pi, f)
    all_sample = np.concatenate((sample, f_sample))
    all_centre = np.concatenate((centre, f_centre))
    all_size = np.concatenate((size, rng.uniform(0.3, 5, (f, 3))))
    all_rot = np.concatenate((rotation, np.column_stack((np.cos(f_yaw / 2), np.zeros(f), np.zeros(f),
                                                         np.sin(f_yaw / 2)))))
    all_vel = np.concatenate((velocity, rng.normal(0, 2, (f, 2))))
    all_label = np.concatenate((label, rng.integers(0, 10, f)))
    score = rng.random(m + f)
    order = rng.permutation(m + f)
    out: dict[str, list[dict[str, Any]]] = {t: [] for t in gt.sample_tokens}
    lists = (all_centre.tolist(), all_size.tolist(), all_rot.tolist(), all_vel.tolist())
    for k in order.tolist():
        token = gt.sample_tokens[all_sample[k]]
        name = NUSCENES_DETECTION_CLASSES[all_label[k]]
        out[token].append({"sample_token": token, "translation": lists[0][k], "size": lists[1][k],
                           "rotation": lists[2][k], "velocity": lists[3][k], "detection_name": name,
                           "detection_score": float(score[k]),
                           "attribute_name": default_attribute(name, all_vel[k])})
    return out


# ----------------------------------------------------------------------------- timing


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeats):
        tic = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times), value


@contextlib.contextmanager
def _quiet() -> Any:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _devkit_phases(root: Path, split: str, result_path: Path, repeats: int) -> dict[str, Any]:
    """The devkit's ``DetectionEval`` split in its three phases (the constructor's steps,
    then ``evaluate``)."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import (
        add_center_dist,
        filter_eval_boxes,
        load_gt,
        load_prediction,
    )
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    cfg = config_factory("detection_cvpr_2019")
    state: dict[str, Any] = {}

    def load_gt_phase() -> None:
        with _quiet():
            nusc = NuScenes(version=VERSION, dataroot=str(root), verbose=False)
            gt = load_gt(nusc, split, DetectionBox, verbose=False)
            gt = add_center_dist(nusc, gt)
            state["gt"] = filter_eval_boxes(nusc, gt, cfg.class_range, verbose=False)
            state["nusc"] = nusc

    def load_results_phase() -> None:
        with _quiet():
            nusc = state["nusc"]
            pred, meta = load_prediction(str(result_path), cfg.max_boxes_per_sample, DetectionBox,
                                         verbose=False)
            assert set(pred.sample_tokens) == set(state["gt"].sample_tokens)
            pred = add_center_dist(nusc, pred)
            state["pred"] = filter_eval_boxes(nusc, pred, cfg.class_range, verbose=False)
            state["meta"] = meta

    def metrics_phase() -> dict[str, Any]:
        # DetectionEval.evaluate() on the loaded boxes; the constructor (which would load
        # everything again) is bypassed so that the phases are timed apart.
        evaluator = DetectionEval.__new__(DetectionEval)
        evaluator.cfg, evaluator.verbose = cfg, False
        evaluator.gt_boxes, evaluator.pred_boxes = state["gt"], state["pred"]
        metrics, _ = evaluator.evaluate()
        return json.loads(json.dumps(metrics.serialize()))

    t_gt, _ = _median_time(load_gt_phase, repeats)
    t_res, _ = _median_time(load_results_phase, repeats)
    t_metrics, summary = _median_time(metrics_phase, repeats)
    return {"load_gt": t_gt, "load_results": t_res, "metrics": t_metrics, "summary": summary}


def _max_difference(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    """Largest absolute difference over every number of the devkit summary (NaN = NaN)."""
    worst = 0.0

    def walk(a: Any, b: Any, key: str) -> None:
        nonlocal worst
        if isinstance(b, dict):
            for k in b:
                walk(a[k], b[k], f"{key}/{k}")
        elif isinstance(b, (int, float)) and not isinstance(b, bool) and key != "/eval_time":
            if math.isnan(b) or math.isnan(a):
                if not (math.isnan(a) and math.isnan(b)):
                    worst = math.inf
            else:
                worst = max(worst, abs(a - b))

    walk(ours, {k: v for k, v in ref.items() if k != "meta"}, "")
    return worst


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the timings (seconds), sizes and the largest difference."""
    root = ensure_dataset(Path(args.cache_dir), args.scenes, args.samples_per_scene, args.seed)
    gt = load_nuscenes_gt(root, VERSION, args.split)
    submission = make_results(gt, args.seed + 1, args.fp_per_sample)
    tmp = Path(tempfile.mkdtemp(prefix="distill3d-nuscenes-eval-"))
    result_path = tmp / "results.json"
    write_nuscenes_results(result_path, submission, META)

    ours_repeats = max(args.repeats, 5)
    t_gt, gt = _median_time(lambda: load_nuscenes_gt(root, VERSION, args.split, cache=False),
                            ours_repeats)
    load_nuscenes_gt(root, VERSION, args.split)   # make sure the cache exists
    t_gt_cached, _ = _median_time(lambda: load_nuscenes_gt(root, VERSION, args.split), ours_repeats)
    t_res, results = _median_time(lambda: load_nuscenes_results(result_path, gt), ours_repeats)
    t_metrics, metrics = _median_time(lambda: evaluate_nuscenes(gt, results), ours_repeats)
    t_bands, _ = _median_time(lambda: evaluate_nuscenes_by_distance(gt, results), ours_repeats)
    out: dict[str, Any] = {
        "samples": len(gt.sample_tokens), "gt_boxes": len(gt),
        "gt_boxes_evaluated": int(metrics.num_gt.sum()), "predictions": len(results),
        "predictions_evaluated": int(metrics.num_pred.sum()),
        "ours": {"load_gt": t_gt, "load_gt_cached": t_gt_cached, "load_results": t_res,
                 "metrics": t_metrics, "metrics_by_distance": t_bands},
        "mean_ap": metrics.mean_ap, "nd_score": metrics.nd_score,
    }
    if not args.no_devkit:
        try:
            import nuscenes  # noqa: F401
        except ImportError:
            print("nuscenes-devkit is not installed: devkit timings skipped", file=sys.stderr)
        else:
            dev = _devkit_phases(root, args.split, result_path, args.repeats)
            out["devkit"] = {k: dev[k] for k in ("load_gt", "load_results", "metrics")}
            out["max_abs_difference"] = _max_difference(metrics.to_summary_dict(), dev["summary"])
    for path in tmp.iterdir():
        path.unlink()
    tmp.rmdir()
    return out


def format_report(out: dict[str, Any], args: argparse.Namespace) -> str:
    """The printed table."""
    import platform

    lines = [
        "nuScenes detection evaluation (detection_cvpr_2019): distill3d vs nuscenes-devkit",
        (f"data: SynthDrive {VERSION} split {args.split!r}: {out['samples']} samples, "
         f"{out['gt_boxes']} GT boxes ({out['gt_boxes_evaluated']} after filtering), "
         f"{out['predictions']} predictions ({out['predictions_evaluated']} after filtering)"),
        (f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
         f"median of {max(args.repeats, 5)} (ours) / {args.repeats} (devkit) runs"),
        "",
        f"{'phase':<28}{'devkit (s)':>12}{'ours (s)':>12}{'speed-up':>11}",
    ]
    ours, dev = out["ours"], out.get("devkit")

    def row(title: str, t_dev: float | None, t_ours: float) -> str:
        if t_dev is None:
            return f"{title:<34}{'-':>12}{t_ours:>12.3f}{'-':>11}"
        return f"{title:<34}{t_dev:>12.3f}{t_ours:>12.3f}{t_dev / t_ours:>10.1f}x"

    def dev_t(key: str) -> float | None:
        return dev[key] if dev else None

    lines[-1] = f"{'phase':<34}{'devkit (s)':>12}{'ours (s)':>12}{'speed-up':>11}"
    lines.append(row("load GT: tables + GT (cold)", dev_t("load_gt"), ours["load_gt"]))
    lines.append(row("load GT: cached GT", dev_t("load_gt"), ours["load_gt_cached"]))
    lines.append(row("load results (JSON)", dev_t("load_results"), ours["load_results"]))
    lines.append(row("metrics (filter, match, AP, TP)", dev_t("metrics"), ours["metrics"]))
    total_dev = sum(dev[k] for k in ("load_gt", "load_results", "metrics")) if dev else None
    lines.append(row("total, cold GT", total_dev,
                     ours["load_gt"] + ours["load_results"] + ours["metrics"]))
    lines.append(row("total, cached GT", total_dev,
                     ours["load_gt_cached"] + ours["load_results"] + ours["metrics"]))
    lines.append(row("metrics of the 3 distance bands", None, ours["metrics_by_distance"]))
    lines.append("")
    lines.append(f"mAP {out['mean_ap']:.4f}, NDS {out['nd_score']:.4f}")
    if "max_abs_difference" in out:
        lines.append(f"max |ours - devkit| over every metric of metrics_summary.json: "
                     f"{out['max_abs_difference']:.3g}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs per devkit phase (ours: max(5, this))")
    parser.add_argument("--cache-dir", default="/tmp/distill3d-bench-cache",
                        help="where the SynthDrive set is generated once")
    parser.add_argument("--scenes", type=int, default=32, help="scenes generated (27 train + 5 val)")
    parser.add_argument("--samples-per-scene", type=int, default=40)
    parser.add_argument("--split", default="train", help="split evaluated")
    parser.add_argument("--fp-per-sample", type=int, default=40, help="random false positives per sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-devkit", action="store_true", help="time ours only")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    args = parse_args(argv)
    out = run(args)
    print(format_report(out, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
