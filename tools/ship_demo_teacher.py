"""Write the demo teacher that ships in the package from a trained run.

    distill3d train synthdrive/demo_teacher --work-dir runs/demo_teacher
    python tools/ship_demo_teacher.py runs/demo_teacher

It stores the run's final weights (EMA weights when the run kept them) as a plain state dict
in float16 (half the size; the demo loads them into a float32 model) at
``src/distill3d/assets/demo_teacher.pth``, and beside it ``demo_teacher.json`` with the
provenance: the config, the command, the epochs and the run's final validation metrics.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import torch

from distill3d.atomic_io import atomic_write_bytes, atomic_write_text
from distill3d.engine.checkpoint import read_checkpoint

ASSETS = Path(__file__).resolve().parent.parent / "src" / "distill3d" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the demo teacher's run folder")
    args = parser.parse_args()
    payload = read_checkpoint(args.run / "checkpoints" / "last.pth")
    state = dict(payload["model"])
    if payload.get("ema"):
        state.update(payload["ema"]["shadow"])
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(half, buffer)
    ASSETS.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(ASSETS / "demo_teacher.pth", buffer.getvalue())
    epochs = int(payload["epochs_done"])
    metrics_path = args.run / "eval" / f"epoch_{epochs}" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    info = {
        "config": "synthdrive/demo_teacher",
        "command": "distill3d train synthdrive/demo_teacher --work-dir runs/demo_teacher && "
                   "python tools/ship_demo_teacher.py runs/demo_teacher",
        "epochs": epochs,
        "steps": int(payload["global_step"]),
        "weights": "EMA" if payload.get("ema") else "final",
        "dtype": "float16",
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "validation_metrics": {k: metrics[k] for k in ("mAP", "NDS") if k in metrics},
    }
    atomic_write_text(ASSETS / "demo_teacher.json", json.dumps(info, indent=2) + "\n")
    for name in ("demo_teacher.pth", "demo_teacher.json"):
        (ASSETS / name).chmod(0o644)  # package data: readable by every user (atomic writes create 0600)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
