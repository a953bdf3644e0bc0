"""``distill3d evaluate``: the official nuScenes or KITTI metrics of a results file.

Examples::

    distill3d evaluate --dataset nuscenes --dataroot data/nuscenes --version v1.0-trainval \\
        --split val --results results_nusc.json --out metrics_summary.json
    distill3d evaluate --dataset kitti --dataroot data/kitti --split val \\
        --results kitti_results/ --out kitti_metrics.json --by-distance

* nuScenes: ``--results`` is the official submission JSON, which must cover every sample
  of the split (as in the devkit); ``--out`` receives the devkit's ``metrics_summary.json``
  (``mean_ap``, ``nd_score``, ``tp_errors``, ``label_aps``, ``label_tp_errors``,
  ``mean_dist_aps``, ...); the printed table is the devkit's. ``--version`` may be left
  out when the dataroot holds a single ``v1.0-*`` table folder.
* KITTI: ``--results`` is a folder of ``<frame_id>.txt`` result files (16 columns, the
  score last), one per frame of ``ImageSets/<split>.txt``; ``--out`` receives ``{"R40":
  {class: {"bbox": [easy, moderate, hard], "bev": [...], "3d": [...], "aos": [...]}},
  "R11": {...}, "loose": {"R40": ..., "R11": ...}}`` in percent (official IoU thresholds,
  and the loose ones under ``"loose"``); the printed table is the reference's.
* ``--by-distance`` adds the breakdown by distance (0-20, 20-30, 30+ m): a compact table
  of the headline numbers per band is printed and, with ``--out M.json``, the full
  per-band metrics go to ``M_by_distance.json`` beside it.

Bad input (an unreadable or malformed results file, a NaN box, an unknown class, a sample
of the split without results, a token not in the split) is one line naming the sample and
the field, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from distill3d.errors import Distill3DError

if TYPE_CHECKING:
    from distill3d.evaluation.evaluator import EvaluationResult


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _nuscenes_version(root: Path, version: str | None) -> str:
    if version is not None:
        return version
    if not root.is_dir():
        raise Distill3DError(f"{root}: dataroot not found")
    found = sorted(p.name for p in root.glob("v1.0-*") if (p / "sample.json").is_file())
    if len(found) != 1:
        raise Distill3DError(f"{root}: found nuScenes versions {found or 'none'}; pass --version")
    return found[0]


def _evaluate_nuscenes(args: argparse.Namespace) -> EvaluationResult:
    """GT of the split, the results file (covering exactly the split), the metrics."""
    from distill3d.evaluation.evaluator import nuscenes_evaluation_result
    from distill3d.evaluation.nuscenes import load_nuscenes_gt, load_nuscenes_results

    if args.classes:
        raise Distill3DError("--classes applies to KITTI only (nuScenes evaluates its 10 classes)")
    root = Path(args.dataroot)
    version = _nuscenes_version(root, args.version)
    try:
        gt = load_nuscenes_gt(root, version, args.split)
    except Distill3DError:
        raise
    except ValueError as exc:   # a split the version does not have
        raise Distill3DError(f"{root} ({version}): {exc}") from None
    results = load_nuscenes_results(args.results, gt)
    return nuscenes_evaluation_result(gt, results, by_distance=args.by_distance)


def _evaluate_kitti(args: argparse.Namespace) -> EvaluationResult:
    """label_2 GT of the split, one result file per frame, the APs."""
    from distill3d.evaluation.evaluator import kitti_evaluation_result
    from distill3d.evaluation.kitti import (
        KITTI_EVAL_CLASSES,
        load_kitti_gt,
        read_kitti_results,
    )

    if args.version is not None:
        print("distill3d evaluate: note: --version is ignored for KITTI", file=sys.stderr)
    classes = tuple(KITTI_EVAL_CLASSES)
    if args.classes:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
        unknown = [c for c in classes if c not in KITTI_EVAL_CLASSES]
        if unknown or not classes:
            raise Distill3DError(f"--classes: {unknown or args.classes!r} not evaluable; choose "
                                 f"among {', '.join(KITTI_EVAL_CLASSES)}")
    gt = load_kitti_gt(args.dataroot, args.split)
    frame_ids = [a["frame_id"] for a in gt]
    detections = read_kitti_results(args.results, frame_ids)
    return kitti_evaluation_result(gt, detections, classes, by_distance=args.by_distance,
                                   frame_ids=frame_ids)


def _write_json(path: Path, content: object) -> None:
    from distill3d.data.index_cache import atomic_write_bytes

    try:
        atomic_write_bytes(path, json.dumps(content, indent=2).encode("utf-8"))
    except OSError as exc:
        raise Distill3DError(f"{path}: cannot write the metrics file: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    """Evaluate, print the table (and the distance breakdown), write the metrics files."""
    try:
        result = _evaluate_nuscenes(args) if args.dataset == "nuscenes" else _evaluate_kitti(args)
    except Distill3DError as exc:   # one line, whatever the message holds
        raise Distill3DError(_one_line(exc)) from None
    print(result.table.rstrip("\n"))
    if args.by_distance:
        print()
        print("By distance (headline numbers per band):")
        print(result.distance_table)
    if args.out:
        out = Path(args.out)
        _write_json(out, result.metrics)
        print(f"\nmetrics written to {out}")
        if args.by_distance:
            band_path = out.with_name(f"{out.stem}_by_distance{out.suffix or '.json'}")
            _write_json(band_path, result.by_distance)
            print(f"distance breakdown written to {band_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` verb."""
    parser = subparsers.add_parser(
        "evaluate", help="nuScenes or KITTI metrics of a results file",
        description="Official nuScenes (detection_cvpr_2019: mAP, TP errors, NDS) or KITTI (AP "
                    "bbox/BEV/3D/AOS, R40 and R11) metrics of a results file, equal to the "
                    "devkit's / reference's. Prints the familiar table.")
    parser.add_argument("--dataset", choices=["nuscenes", "kitti"], required=True)
    parser.add_argument("--dataroot", required=True,
                        help="nuScenes dataroot (holding v1.0-*/) or KITTI object root")
    parser.add_argument("--version", help="nuScenes version, e.g. v1.0-mini (default: the only one "
                                          "in the dataroot)")
    parser.add_argument("--split", required=True,
                        help="nuScenes: train, val, mini_train, mini_val, ...; KITTI: "
                             "ImageSets/<split>.txt")
    parser.add_argument("--results", required=True,
                        help="results JSON (nuScenes submission format) or folder of <frame>.txt (KITTI)")
    parser.add_argument("--out", metavar="M.json",
                        help="metrics JSON to write (nuScenes: metrics_summary.json structure; "
                             "KITTI: R40/R11/loose)")
    parser.add_argument("--by-distance", action="store_true",
                        help="add the breakdown by distance (0-20, 20-30, 30+ m); with --out also "
                             "written to <out stem>_by_distance.json")
    parser.add_argument("--classes", metavar="C1,C2",
                        help="KITTI classes evaluated (default: Car,Pedestrian,Cyclist)")
    parser.set_defaults(func=_run)
