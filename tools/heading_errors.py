"""Where a detector's orientation error comes from: per class, how many GT boxes get a
heading within 0.3 rad, how many are flipped (error above pi - 0.3: the box found facing
backwards) and how many are in between.

    python tools/heading_errors.py synthdrive/demo_teacher src/distill3d/assets/demo_teacher.pth

Each GT box of the validation split is paired with the nearest detection of its class whose
centre lies within 2 m and whose score is at least ``--min-score`` (a diagnostic pairing, not
the nuScenes one-to-one matching; mAOE itself comes from ``distill3d test``). The heading
error is ``|yaw_det - yaw_gt|`` wrapped to [0, pi], in the LiDAR frame.
"""

from __future__ import annotations

import argparse
import math

import torch

from distill3d.config import load_config
from distill3d.data.loader import collate_samples
from distill3d.engine.builders import build_dataset, build_model
from distill3d.engine.checkpoint import load_checkpoint

ACCURATE = 0.3  # rad


def heading_errors(cfg_name: str, ckpt: str, min_score: float, max_distance: float) -> dict[str, list[float]]:
    """``{class name: [heading error of each paired GT box]}`` over the validation split."""
    cfg = load_config(cfg_name)
    model = build_model(cfg)
    load_checkpoint(ckpt, model, weights="auto", prefix="auto")
    model.eval()
    val = build_dataset(cfg, cfg.data.val_split, training=False)
    errors: dict[str, list[float]] = {}
    with torch.no_grad():
        for start in range(0, len(val), 4):
            samples = [val[i] for i in range(start, min(start + 4, len(val)))]
            for sample, det in zip(samples, model.decode(model(collate_samples(samples)))):
                keep = det.scores >= min_score
                boxes, labels = det.boxes[keep], det.labels[keep]
                for gt, label in zip(sample.boxes, sample.labels):
                    same = boxes[labels == label]
                    if not len(same):
                        continue
                    distance = torch.linalg.norm(same[:, :2] - gt[:2], dim=1)
                    nearest = int(distance.argmin())
                    if distance[nearest] > max_distance:
                        continue
                    delta = float(same[nearest, 6] - gt[6])
                    errors.setdefault(sample.class_names[int(label)], []).append(
                        abs((delta + math.pi) % (2 * math.pi) - math.pi))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the detector's config (a file or a shipped config name)")
    parser.add_argument("ckpt", help="its checkpoint (a distillation checkpoint's student is used)")
    parser.add_argument("--min-score", type=float, default=0.3)
    parser.add_argument("--max-distance", type=float, default=2.0, help="metres between centres")
    args = parser.parse_args()
    errors = heading_errors(args.config, args.ckpt, args.min_score, args.max_distance)
    print("| class | paired GT boxes | mean error (rad) | median | within 0.3 rad | flipped | in between |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, values in sorted(errors.items(), key=lambda item: -len(item[1])):
        e = torch.tensor(values)
        accurate = float((e < ACCURATE).float().mean())
        flipped = float((e > math.pi - ACCURATE).float().mean())
        print(f"| {name} | {len(values)} | {e.mean():.3f} | {e.median():.3f} | {accurate:.0%} | {flipped:.0%} | "
              f"{1 - accurate - flipped:.0%} |")


if __name__ == "__main__":
    main()
