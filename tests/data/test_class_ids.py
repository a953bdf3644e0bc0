"""Datasets answer 'which classes does sample i hold' from their index, as loading would."""

from __future__ import annotations

from pathlib import Path

from distill3d.data import ClassBalancedSampler, NuScenesDataset


def test_nuscenes_class_ids_from_index_equal_loaded_labels(synth_nuscenes: Path) -> None:
    dataset = NuScenesDataset(synth_nuscenes, split="train", load_cameras=False)
    for index in range(len(dataset)):
        assert dataset.sample_class_ids(index) == set(dataset.load_sample(index).labels.tolist())
    sampler = ClassBalancedSampler.from_dataset(dataset, seed=0)
    assert len(sampler) > 0
