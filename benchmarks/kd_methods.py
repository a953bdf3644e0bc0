"""The SynthDrive distillation benchmark: every method preset on the demo teacher's 4x and 16x
students, with the no-KD students, over several seeds, with one fixed budget.

Each run is a ``distill3d distill`` (or, for the no-KD rows, ``distill3d train``) of
``synthdrive/demo_distill_x{width}`` / ``synthdrive/demo_student_x{width}`` with the given
seed and epochs; its final evaluation (nuScenes mAP / NDS on the validation split) is read
from its run folder. Finished runs are skipped, so the script can be stopped and restarted;
``--table`` only prints the table of what is there. Results go to ``OUT/results.json`` and the
table (mean and sample standard deviation over seeds) to stdout in Markdown.

    python benchmarks/kd_methods.py --teacher-ckpt T.pth --out runs/bench \
        --methods none pointdistiller fitnet heatmap_kd pp_logit --widths 0.25 --seeds 0 1 2 --epochs 8 \
        --cache-root runs/bench_cache
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from _machine import CpuMonitor  # benchmarks/ is on sys.path when run as a script

from distill3d.commands.distill_cmd import distill_config, run_distillation
from distill3d.commands.train_cmd import run_training
from distill3d.config import load_config, with_fixed_budget


def _final(run: Path, epochs: int) -> dict[str, float] | None:
    path = run / "eval" / f"epoch_{epochs}" / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


#: methods whose terms read only the teacher's pillars and heads: one cache per seed serves them all
CACHEABLE = ("pointdistiller", "heatmap_kd", "pp_logit", "sparsekd", "gaussian_response")


def ensure_cache(root: Path, width: str, seed: int, epochs: int, teacher_ckpt: str) -> str:
    """The teacher cache of ``seed`` (pillars and heads, one augmentation seed per epoch),
    written on first use. It depends on the teacher, the data and the seed, not on the student,
    so both widths share it (``distill`` checks its manifest against each run's config)."""
    from distill3d.distill.cache import write_teacher_cache

    folder = root / f"seed{seed}"
    if not (folder / "manifest.json").is_file():
        cfg = distill_config(f"synthdrive/demo_distill_x{width}", [], method="pointdistiller", teacher_ckpt=teacher_ckpt)
        cfg = with_fixed_budget(cfg, epochs, seed=seed)
        started = time.perf_counter()
        write_teacher_cache(cfg, teacher_ckpt, folder, augmentation_seeds=epochs)
        print(f"teacher cache for seed {seed}: {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr,
              flush=True)
    return str(folder)


def run_one(method: str, width: str, seed: int, epochs: int, out: Path, teacher_ckpt: str,
            cache_root: Path | None, threads: int | None = None) -> dict[str, float]:
    run = out / f"x{width}" / method / f"seed{seed}"
    done = _final(run, epochs)
    if done is not None:
        return done
    started = time.perf_counter()
    if method == "none":
        cfg = with_fixed_budget(load_config(f"synthdrive/demo_student_x{width}"), epochs, seed=seed, num_threads=threads)
        run_training(cfg, work_dir=str(run), overwrite=True, quiet=True)
    elif method == "none_beam_gap":  # the no-KD student on beam_gap's input (every second beam)
        cfg = distill_config(f"synthdrive/demo_distill_x{width}", [], method="beam_gap", teacher_ckpt=teacher_ckpt)
        cfg = with_fixed_budget(dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, terms=[])), epochs,
                                seed=seed, num_threads=threads)
        run_distillation(cfg, work_dir=str(run), overwrite=True, quiet=True)
    else:
        cfg = distill_config(f"synthdrive/demo_distill_x{width}", [], method=method, teacher_ckpt=teacher_ckpt)
        cache = ensure_cache(cache_root, width, seed, epochs, teacher_ckpt) if cache_root and method in CACHEABLE \
            else None
        cfg = with_fixed_budget(cfg, epochs, seed=seed, num_threads=threads, cache_dir=cache)
        run_distillation(cfg, work_dir=str(run), overwrite=True, quiet=True)
    metrics = _final(run, epochs)
    assert metrics is not None, f"{run}: no final evaluation"
    metrics["minutes"] = (time.perf_counter() - started) / 60
    (run / "bench.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    print(f"x{width} {method} seed {seed}: mAP {metrics['mAP']:.4f} NDS {metrics['NDS']:.4f} "
          f"({metrics['minutes']:.1f} min)", file=sys.stderr, flush=True)
    return metrics


#: the table's row labels and order
LABELS = {
    "none": "no KD",
    "pointdistiller": "PointDistiller",
    "fitnet": "FitNet",
    "attention_transfer": "attention transfer",
    "fgd": "FGD",
    "heatmap_kd": "heatmap KD (dense Hinton)",
    "gaussian_response": "Gaussian response KD",
    "pp_logit": "SparseKD pivotal-position KD",
    "sparsekd": "SparseKD (TGI + PP-logit + label KD)",
    "none_beam_gap": "no KD on every 2nd beam",
    "beam_gap": "beam-gap KD on every 2nd beam",
}


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(results: dict[str, dict[str, dict[str, float]]], teacher: dict[str, float] | None) -> str:
    """The Markdown table of ``results`` (``{"x{width}/{method}": {seed: metrics}}``): one row a
    width and method, mean ± sample sd over the seeds, mAP of each seed (by seed number) and
    the median minutes per run."""
    lines = ["| student | method | preset | seeds | mAP (mean ± sd) | NDS (mean ± sd) | mAP per seed | min per run |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    if teacher:
        lines.append(f"| teacher x1.0 | — | — | 1 | {teacher['mAP']:.4f} | {teacher['NDS']:.4f} | — | — |")
    order = {name: i for i, name in enumerate(LABELS)}
    for key in sorted(results, key=lambda k: (k.split("/")[0], order.get(k.split("/")[1], len(order)))):
        width, method = key.split("/")
        runs = [results[key][seed] for seed in sorted(results[key], key=int)]
        maps = [r["mAP"] for r in runs]
        ndss = [r["NDS"] for r in runs]
        minutes = [r.get("minutes", float("nan")) for r in runs]
        per_seed = " / ".join(f"{m:.4f}" for m in maps)
        lines.append(f"| {width} | {LABELS.get(method, method)} | `{method}` | {len(runs)} | {_mean_sd(maps)} | "
                     f"{_mean_sd(ndss)} | {per_seed} | {statistics.median(minutes):.1f} |")
    return "\n".join(lines)


#: the comparisons the papers claim (method, baseline), and each method against its no-KD student
CLAIMS = (("pointdistiller", "none"), ("pointdistiller", "fitnet"), ("pp_logit", "heatmap_kd"),
          ("sparsekd", "none"), ("fitnet", "none"), ("heatmap_kd", "none"), ("pp_logit", "none"),
          ("gaussian_response", "none"), ("attention_transfer", "none"), ("fgd", "none"),
          ("beam_gap", "none_beam_gap"))


def paired(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """The Markdown table of paired differences: for each claim and width, ``method - baseline``
    per seed (the same seed gives both runs the same data order and augmentation), its mean and
    on how many seeds the method wins."""
    lines = ["| student | comparison | seeds | mAP diff (mean) | NDS diff (mean) | mAP diff per seed | mAP wins |",
             "|---|---|---:|---:|---:|---|---:|"]
    widths = sorted({key.split("/")[0] for key in results})
    for width in widths:
        for method, baseline in CLAIMS:
            a, b = results.get(f"{width}/{method}", {}), results.get(f"{width}/{baseline}", {})
            seeds = sorted(set(a) & set(b), key=int)
            if not seeds:
                continue
            d_map = [a[s]["mAP"] - b[s]["mAP"] for s in seeds]
            d_nds = [a[s]["NDS"] - b[s]["NDS"] for s in seeds]
            per_seed = " / ".join(f"{d:+.4f}" for d in d_map)
            wins = sum(d > 0 for d in d_map)
            lines.append(f"| {width} | {method} vs {baseline} | {len(seeds)} | {statistics.mean(d_map):+.4f} | "
                         f"{statistics.mean(d_nds):+.4f} | {per_seed} | {wins}/{len(seeds)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-ckpt", required=True)
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--methods", nargs="+", default=["none", "pointdistiller", "fitnet", "heatmap_kd", "pp_logit"])
    parser.add_argument("--widths", nargs="+", default=["0.25"], choices=["0.25", "0.5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cache-root", type=Path, help="read the teacher from per-seed caches under this folder "
                                                        "(written on first use) for the methods that allow it")
    parser.add_argument("--teacher-metrics", help="the teacher's metrics.json, for the table's first row")
    parser.add_argument("--threads", type=int, help="intra-op CPU threads per run (default: the machine's CPUs); "
                                                    "1 lets two runners share a 2-core machine")
    parser.add_argument("--table", action="store_true", help="only print the table of finished runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    monitor = CpuMonitor()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        for width in args.widths:
            for method in args.methods:
                run = out / f"x{width}" / method / f"seed{seed}"
                if args.table:
                    bench = run / "bench.json"
                    if not bench.is_file():
                        continue
                    metrics = json.loads(bench.read_text(encoding="utf-8"))
                else:
                    metrics = run_one(method, width, seed, args.epochs, out, args.teacher_ckpt, args.cache_root,
                                      args.threads)
                results.setdefault(f"x{width}/{method}", {})[str(seed)] = metrics
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    teacher = json.loads(Path(args.teacher_metrics).read_text()) if args.teacher_metrics else None
    print(f"budget: {args.epochs} epochs of the SynthDrive demo set per run")
    print(table(results, teacher))
    print()
    print(paired(results))
    other = monitor.other_share()
    if other is not None:
        print(f"other processes used {other:.0%} of the machine's CPU time during the run")


if __name__ == "__main__":
    main()
