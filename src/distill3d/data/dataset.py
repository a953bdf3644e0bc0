"""The base class of every detection dataset: an index of frames and a loader of Samples.

A dataset yields :class:`~distill3d.data.sample.Sample` objects in our conventions
(key LiDAR frame, geometric-centre boxes). Augmentation is a callable applied to the
loaded Sample with a random generator derived from ``(seed, epoch, index)``, so the same
sample gets the same augmentation whatever the number of loader workers.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from distill3d.data.sample import Sample


class SampleTransform(Protocol):
    """An augmentation or preprocessing step: ``(sample, rng) -> sample``."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for augmenting sample ``index`` in ``epoch``: independent of worker
    count and order."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]))


class DetectionDataset(torch.utils.data.Dataset):
    """Base class: subclasses implement ``__len__``, ``load_sample`` and ``sample_tokens``.

    Args:
        class_names: the classes ``Sample.labels`` index; boxes of other classes are
            dropped by the subclass.
        transforms: applied in order to each loaded sample.
        seed: base seed of the augmentation generators.
    """

    def __init__(self, class_names: Sequence[str], transforms: Sequence[SampleTransform] = (),
                 seed: int = 0):
        self.class_names = tuple(class_names)
        self.transforms = list(transforms)
        self.seed = seed
        self.epoch = 0
        #: when set, epoch ``e`` draws the augmentation of epoch ``e % augmentation_cycle``
        #: (a teacher cache holds that many augmented copies of each sample)
        self.augmentation_cycle: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_sample(self, index: int) -> Sample:  # pragma: no cover - abstract
        """The sample at ``index`` as stored, before any transform."""
        raise NotImplementedError

    def sample_tokens(self) -> list[str]:  # pragma: no cover - abstract
        """The token of every sample, in index order."""
        raise NotImplementedError

    def sample_class_ids(self, index: int) -> set[int]:
        """The labels present in sample ``index`` (what class-balanced sampling needs).

        This default loads the sample; readers with an index override it to answer from
        the index without touching sensor files.
        """
        return set(self.load_sample(index).labels.tolist())

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range 0..{len(self) - 1}")
        sample = self.load_sample(index)
        epoch = self.epoch % self.augmentation_cycle if self.augmentation_cycle else self.epoch
        if self.transforms:
            rng = sample_rng(self.seed, epoch, index)
            for transform in self.transforms:
                sample = transform(sample, rng)
        sample.extras = {**sample.extras, "augmentation_epoch": epoch}
        return sample

