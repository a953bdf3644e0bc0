"""The trainer evaluates with the generic evaluator (:mod:`distill3d.evaluation.evaluator`).

The metrics a training run reports (and the files of its evaluation folder) must equal
``distill3d.evaluation.build_evaluator(dataset)`` run directly on the same detections, also
when the evaluation samples are augmented (the predictions are mapped back to the original
frame once, with the evaluator's own function); and what the processes exchange under DDP
(:class:`~distill3d.engine.trainer.Prediction`) must be plain picklable data that gives the
same numbers after a pickle round trip and a merge of overlapping shards.
"""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_helpers import BoxWorld
from torch import Tensor, nn

from distill3d.config.schema import DataConfig, ExperimentConfig, TrainConfig
from distill3d.data.kitti import KittiDataset
from distill3d.data.nuscenes import NuScenesDataset
from distill3d.data.sample import Sample
from distill3d.data.transforms import GlobalRotScaleTrans, RandomFlip3D
from distill3d.engine import Trainer, prepare_run_dir, seed_everything
from distill3d.engine.builders import (
    DatasetEvaluator,
    build_eval_loader,
    build_evaluator,
    build_train_loader,
    flat_metrics,
)
from distill3d.engine.trainer import Prediction, predict
from distill3d.evaluation import build_evaluator as build_detection_evaluator
from distill3d.structures import Detections


class NoisyOracle(nn.Module):
    """A train module whose predictions are each sample's GT boxes (in the sample's frame,
    augmented or not) with noise, some dropped, plus false positives; random scores. The
    noise depends only on the token, so every pass predicts the same. Records what it
    predicted (the sample as the model saw it and its detections) by token."""

    def __init__(self, sigma: float = 0.3) -> None:
        super().__init__()
        self.sigma = sigma
        self.weight = nn.Parameter(torch.ones(1))
        self.seen: dict[str, tuple[Sample, Detections]] = {}

    def forward(self, batch: Any) -> dict[str, Tensor]:
        return {"loss": (self.weight - 0.5).pow(2).sum() + 0.0 * batch.points.sum()}

    def predict(self, batch: Any) -> list[Detections]:
        out = []
        for sample in batch.samples:
            g = torch.Generator().manual_seed(zlib.crc32(sample.token.encode()))
            keep = torch.rand(sample.boxes.shape[0], generator=g) < 0.85
            boxes, labels = sample.boxes[keep].clone(), sample.labels[keep].clone()
            k = boxes.shape[0]
            boxes[:, :2] += self.sigma * torch.randn(k, 2, generator=g)
            boxes[:, 2] += self.sigma / 3 * torch.randn(k, generator=g)
            boxes[:, 3:6] *= torch.exp(0.05 * torch.randn(k, 3, generator=g))
            boxes[:, 6] += 0.1 * torch.randn(k, generator=g)
            boxes[:, 7:9] = torch.nan_to_num(boxes[:, 7:9]) + 0.3 * torch.randn(k, 2, generator=g)
            fp = torch.zeros(3, 9)
            fp[:, 0] = 5.0 + 30.0 * torch.rand(3, generator=g)
            fp[:, 1] = -10.0 + 20.0 * torch.rand(3, generator=g)
            fp[:, 2] = -1.0
            fp[:, 3:6] = 0.5 + 3.0 * torch.rand(3, 3, generator=g)
            fp[:, 7:9] = float("nan")
            fp_labels = torch.randint(0, len(sample.class_names), (3,), generator=g)
            scores = torch.cat((0.3 + 0.7 * torch.rand(k, generator=g), 0.5 * torch.rand(3, generator=g)))
            det = Detections(torch.cat((boxes, fp)), scores, torch.cat((labels, fp_labels)))
            self.seen[sample.token] = (sample, det)
            out.append(det)
        return out


#: Centre noise (m): KITTI's 3D AP needs IoU 0.7 for cars.
SIGMA = {"nuscenes": 0.3, "kitti": 0.05}


def _case(suite: str, synth_nuscenes: Path, synth_kitti: Path) -> tuple[ExperimentConfig, str, Any]:
    """An experiment config and its *augmented* evaluation split (rotation, scaling, flips)."""
    augment = [GlobalRotScaleTrans(), RandomFlip3D(flip_x_prob=0.5, flip_y_prob=0.5)]
    if suite == "nuscenes":
        split = "train"
        dataset = NuScenesDataset(synth_nuscenes, "v1.0-mini", split, transforms=augment, seed=4)
        data = DataConfig(dataset="nuscenes", root=str(synth_nuscenes), version="v1.0-mini",
                          class_names=list(dataset.class_names))
    else:
        split = "train"
        dataset = KittiDataset(synth_kitti, split, transforms=augment, seed=4)
        data = DataConfig(dataset="kitti", root=str(synth_kitti), class_names=list(dataset.class_names),
                          point_cloud_range=(0.0, -40.0, -3.0, 70.4, 40.0, 1.0))
    return ExperimentConfig(data=data), split, dataset


def _without_time(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _without_time(v) for k, v in tree.items() if k != "eval_time"}
    return tree


@pytest.mark.parametrize("suite", ["nuscenes", "kitti"])
def test_trainer_metrics_equal_the_generic_evaluator(suite: str, synth_nuscenes: Path, synth_kitti: Path,
                                                     tmp_path: Path) -> None:
    cfg, split, val = _case(suite, synth_nuscenes, synth_kitti)
    evaluate_fn = build_evaluator(cfg, split, val)
    assert isinstance(evaluate_fn, DatasetEvaluator) and evaluate_fn.suite == suite
    seed_everything(0)
    model = NoisyOracle(SIGMA[suite])
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=2, num_workers=0, num_threads=1, log_interval=1),
                      build_train_loader(BoxWorld(4), 2, 0, seed=0), device="cpu",
                      run_dir=prepare_run_dir(tmp_path / "run"), quiet=True,
                      val_loader=build_eval_loader(val, 3, 0, seed=0), evaluate_fn=evaluate_fn)
    result = trainer.fit()
    (epoch, metrics), = result.eval_history
    assert epoch == 1 and result.best["metric"] == evaluate_fn.primary_metric

    # the generic evaluator on the samples the model saw (augmented) and its raw detections
    assert sorted(model.seen) == sorted(val.sample_tokens())
    samples, detections = zip(*model.seen.values())
    assert all(not torch.equal(s.bev_transform, torch.eye(4)) for s in samples)
    reference = build_detection_evaluator(val)
    reference.add(list(samples), list(detections), val.class_names)
    expected = reference.evaluate()
    assert metrics == flat_metrics(expected)                       # exactly
    assert {k: metrics[k] for k in expected.headline} == expected.headline
    primary = metrics[evaluate_fn.primary_metric]
    assert 0.05 < primary < (1.0 if suite == "nuscenes" else 100.0)  # a real, imperfect score

    # the evaluation folder holds the evaluator's files, with the same numbers
    folder = tmp_path / "run" / "eval" / "epoch_1"
    names = ({"metrics_summary.json", "results_nusc.json"} if suite == "nuscenes"
             else {"kitti_metrics.json", "kitti_results"})
    assert names | {"metrics_by_distance.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    summary_name = "metrics_summary.json" if suite == "nuscenes" else "kitti_metrics.json"
    summary = json.loads((folder / summary_name).read_text())
    assert json.dumps(_without_time(summary)) == json.dumps(_without_time(expected.metrics))
    bands = json.loads((folder / "metrics_by_distance.json").read_text())
    assert json.dumps(_without_time(bands)) == json.dumps(_without_time(expected.by_distance))
    assert json.loads((folder / "metrics.json").read_text()) == metrics


def test_predictions_gathered_as_plain_data_give_the_same_metrics(synth_nuscenes: Path, synth_kitti: Path) -> None:
    """What two processes would send (overlapping shards, as the distributed sampler pads),
    pickled as ``all_gather_object`` does and merged by token, evaluates to the numbers of
    the generic evaluator on the samples themselves."""
    for suite in ("nuscenes", "kitti"):
        cfg, split, val = _case(suite, synth_nuscenes, synth_kitti)
        model = NoisyOracle(SIGMA[suite])
        local = predict(model, build_eval_loader(val, 2, 0, seed=0), "cpu")
        tokens = list(val.sample_tokens())
        assert list(local) == tokens
        for pred in local.values():
            assert isinstance(pred, Prediction) and set(pred.extras) <= {"calib", "image_size"}
            assert pred.detections.boxes.device.type == "cpu"
        if suite == "kitti":
            assert all("calib" in p.extras for p in local.values())
        half = len(tokens) // 2
        shards = [{t: local[t] for t in tokens[: half + 1]}, {t: local[t] for t in tokens[half:]}]
        merged: dict[str, Prediction] = {}
        for part in (pickle.loads(pickle.dumps(shard)) for shard in shards):
            merged.update(part)
        gathered = build_evaluator(cfg, split, val)(merged, None)

        samples, detections = zip(*model.seen.values())
        reference = build_detection_evaluator(val)
        reference.add(list(samples), list(detections), val.class_names)
        assert gathered == flat_metrics(reference.evaluate()), suite


def test_evaluation_refuses_incomplete_predictions(synth_nuscenes: Path, synth_kitti: Path) -> None:
    cfg, split, val = _case("nuscenes", synth_nuscenes, synth_kitti)
    local = predict(NoisyOracle(), build_eval_loader(val, 4, 0, seed=0), "cpu")
    first = next(iter(local))
    del local[first]
    with pytest.raises(Exception, match=r"1 of \d+ samples of the evaluated split have no detections"):
        build_evaluator(cfg, split, val)(local, None)
