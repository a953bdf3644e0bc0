"""``distill3d synth``: write a SynthDrive dataset in the nuScenes or KITTI layout.

Example::

    distill3d synth --format nuscenes --out data/synthdrive --preset mini --workers 2
    distill3d synth --format kitti --out data/synthdrive_kitti --scenes 4 --samples-per-scene 10
"""

from __future__ import annotations

import argparse
import sys

from distill3d.errors import Distill3DError

_PRESET_HELP = ("dataset size, scenes x samples (2 Hz keyframes; 40 = nuScenes' 20 s scenes): "
                "mini (10 x 40, v1.0-mini names), small (50 x 40), medium (200 x 40), "
                "large (850 x 40) (v1.0-trainval names)")


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    return value


def _run(args: argparse.Namespace) -> int:
    from distill3d.synth.generate import PRESETS, generate_dataset, parse_image_size

    if args.preset not in PRESETS:  # argparse choices already check; kept for API callers
        raise Distill3DError(f"--preset must be one of {', '.join(PRESETS)}")
    image_size = parse_image_size(args.image_size) if args.image_size is not None else None
    report = generate_dataset(
        format=args.format,
        out_dir=args.out,
        preset=args.preset,
        scenes=args.scenes,
        samples_per_scene=args.samples_per_scene,
        beams=args.beams,
        image_size=image_size,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
        sweeps=args.sweeps,
        progress=not args.quiet,
    )
    if not args.quiet:
        where = f"{report.out_dir}" + (f" ({report.version})" if report.version else "")
        rate = report.num_samples / report.elapsed_s if report.elapsed_s > 0 else float("inf")
        print(f"SynthDrive: wrote {len(report.scenes)} scenes, {report.num_samples} samples in "
              f"{report.format} layout to {where} in {report.elapsed_s:.1f} s "
              f"({rate:.2f} samples/s)", file=sys.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` verb."""
    parser = subparsers.add_parser(
        "synth", help="generate a SynthDrive dataset (nuScenes or KITTI layout)",
        description="Generate SynthDrive, the built-in procedural driving dataset: a spinning "
                    "LiDAR and cameras in procedural scenes, written in the exact nuScenes or "
                    "KITTI layout. The same --seed gives byte-identical files whatever --workers.")
    parser.add_argument("--format", required=True, choices=["nuscenes", "kitti"],
                        help="output layout")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder (the nuScenes dataroot / KITTI object root); must be "
                             "empty or absent unless --overwrite")
    parser.add_argument("--preset", default="mini", choices=["mini", "small", "medium", "large"],
                        help=_PRESET_HELP + " (default: mini)")
    parser.add_argument("--scenes", type=_integer, metavar="N",
                        help="number of scenes (default: the preset's)")
    parser.add_argument("--samples-per-scene", type=_integer, metavar="K",
                        help="keyframes (2 Hz) per scene (default: the preset's)")
    parser.add_argument("--beams", type=int, choices=[16, 32, 64],
                        help="LiDAR beams (default: 32 for nuScenes, 64 for KITTI)")
    parser.add_argument("--image-size", metavar="WxH",
                        help="camera image size (default: 704x256 for nuScenes, 1242x375 for KITTI)")
    parser.add_argument("--seed", type=_integer, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--workers", type=_integer, default=1, metavar="W",
                        help="worker processes (default: 1)")
    parser.add_argument("--sweeps", type=_integer, metavar="N",
                        help="nuScenes LiDAR sweeps between keyframes (default: 9 = 20 Hz; 0 for none)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing SynthDrive's folders there")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(func=_run)
