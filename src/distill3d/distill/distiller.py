"""The distiller: a frozen teacher, the student, KD-only adapters and losses, and the terms
that connect them (DESIGN.md section 2, "Distillation").

:class:`Distiller` is a train module for :class:`~distill3d.engine.trainer.Trainer`:
``forward(batch)`` returns the student's detection losses (``det.*``), each term's weighted
value (``kd.<term>``), their sum ``kd`` and the total ``loss``; ``predict(batch)`` runs the
student alone.

* **Teacher.** Frozen (no gradients), never in the optimiser, never in checkpoints (its
  weights come from its own checkpoint). ``teacher_bn_mode: eval`` runs it in eval mode;
  ``train`` uses batch statistics (as PointDistiller's and SparseKD's code) with running
  statistics left untouched.
* **Inputs.** Both models receive the same augmented batch and preprocess it their own
  way; an optional student input transform (beam-gap KD) gives the student a modified copy
  of the points.
* **Terms** are validated when built, by a probe forward of both models on a small
  synthetic batch: unknown taps, losses or parameters, channel mismatches without an
  adapter and grids that cannot be aligned fail at once, naming the term and the key.
* **Adapters and loss modules** (learnable, KD-only) live in ``adapters`` / ``losses``:
  saved in checkpoints, trained with the student, dropped by :meth:`export_student`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill3d.config.schema import (
    DistillConfig,
    LabelKDConfig,
    StudentInputConfig,
    TermConfig,
)
from distill3d.data.loader import Batch, collate_samples
from distill3d.data.sample import Sample
from distill3d.distill.adapters import build_adapter
from distill3d.distill.align import (
    AlignmentError,
    align_pair,
    check_alignable,
    grids_equal,
    resample_bev,
)
from distill3d.distill.context import HeadMaps, KDContext
from distill3d.distill.losses.base import KDLoss, build_loss, loss_class
from distill3d.distill.taps import ModuleRecorder, TapSpec, resolve
from distill3d.errors import ConfigError
from distill3d.models.base import DetectorOutput, Tap
from distill3d.structures import Detections

__all__ = ["Distiller", "TermError", "append_teacher_boxes", "freeze_teacher", "probe_batch"]

#: teacher outputs supplied from outside (the teacher cache): ``batch -> DetectorOutput`` or None
TeacherSource = Callable[[Batch], DetectorOutput | None]


class TermError(ConfigError):
    """A distillation term that cannot be built, naming the term and the key."""


# ----------------------------------------------------------------------------- teacher


def freeze_teacher(teacher: nn.Module, bn_mode: str = "eval") -> nn.Module:
    """Freeze ``teacher`` in place: no gradients, and its weights and BatchNorm running
    statistics never change.

    ``bn_mode="eval"``: eval mode. ``"train"``: train mode with every BatchNorm using batch
    statistics without updating its running statistics (``track_running_stats`` off),
    dropout layers in eval mode.
    """
    teacher.requires_grad_(False)
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"teacher_bn_mode must be 'eval' or 'train', got {bn_mode!r}")
    teacher.eval()
    if bn_mode == "train":
        for module in teacher.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
                module.track_running_stats = False
    return teacher


# ----------------------------------------------------------------------------- probe


def probe_batch(point_cloud_range: Sequence[float], point_features: Sequence[str], class_names: Sequence[str],
                *, batch_size: int = 2, points_per_sample: int = 2000, seed: int = 0) -> Batch:
    """A small synthetic LiDAR batch inside ``point_cloud_range`` (for wiring checks).

    Each sample has ``points_per_sample`` random points (columns ``point_features``; x, y,
    z uniform in the range's inner 90 %, other columns uniform in [0, 1)) and one GT box of
    class 0 near the centre.
    """
    gen = torch.Generator().manual_seed(seed)
    x0, y0, z0, x1, y1, z1 = (float(v) for v in point_cloud_range)
    samples = []
    for b in range(batch_size):
        pts = torch.rand(points_per_sample, len(point_features), generator=gen)
        for axis, (lo, hi) in enumerate(((x0, x1), (y0, y1), (z0, z1))):
            margin = 0.05 * (hi - lo)
            pts[:, axis] = lo + margin + pts[:, axis] * (hi - lo - 2 * margin)
        if "time_lag" in point_features:
            pts[:, list(point_features).index("time_lag")] = 0.0
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        box = torch.tensor([[cx + 2.0, cy - 3.0, 0.5 * (z0 + z1), 4.5, 1.9, 1.7, 0.3, 0.0, 0.0]])
        samples.append(Sample(token=f"probe{b}", points=pts, boxes=box, labels=torch.zeros(1, dtype=torch.long),
                              class_names=tuple(class_names), point_features=tuple(point_features)))
    return collate_samples(samples)


# ----------------------------------------------------------------------------- label KD


def append_teacher_boxes(batch: Batch, detections: Sequence[Detections], teacher_classes: Sequence[str],
                         config: LabelKDConfig, head_grid: Any = None) -> Batch:
    """SparseKD's label KD: the batch with confident teacher boxes appended to each
    sample's GT boxes.

    Args:
        batch: the (student's) batch.
        detections: the teacher's detections per sample (labels index ``teacher_classes``).
        teacher_classes: the teacher's class names.
        config: thresholds (one number, or per class name) and dedup.
        head_grid: the student's head grid: with ``config.dedup`` a teacher box whose
            centre falls in the cell of a GT centre is dropped.

    Returns:
        A new :class:`Batch` (other fields shared) whose boxes, labels, masks and per-box
        point counts (``-1`` for teacher boxes) include the teacher boxes; velocity NaN
        where the teacher predicts none.
    """
    names = list(batch.class_names)
    thresholds = torch.full((len(teacher_classes),), float("inf"))
    for i, name in enumerate(teacher_classes):
        if name not in names:
            continue
        if isinstance(config.score_threshold, Mapping):
            if name in config.score_threshold:
                thresholds[i] = float(config.score_threshold[name])
        else:
            thresholds[i] = float(config.score_threshold)
    to_batch_label = torch.tensor([names.index(n) if n in names else -1 for n in teacher_classes], dtype=torch.long)
    new_boxes: list[Tensor] = []
    new_labels: list[Tensor] = []
    extra_counts: list[int] = []
    for b, det in enumerate(detections):
        gt = batch.boxes_list[b]
        det = det.to(gt.device)
        keep = det.scores >= thresholds.to(gt.device)[det.labels]
        boxes, labels = det.boxes[keep], to_batch_label.to(gt.device)[det.labels[keep]]
        if config.dedup and head_grid is not None and len(boxes) and len(gt):
            cells_t = head_grid.xy_to_cell(boxes[:, :2]).floor().long()
            cells_g = head_grid.xy_to_cell(gt[:, :2]).floor().long()
            same = (cells_t[:, None, :] == cells_g[None, :, :]).all(-1).any(1)
            boxes, labels = boxes[~same], labels[~same]
        new_boxes.append(torch.cat([gt, boxes.to(gt.dtype)], 0))
        new_labels.append(torch.cat([batch.labels_list[b], labels], 0))
        extra_counts.append(int(boxes.shape[0]))
    m = max((int(x.shape[0]) for x in new_boxes), default=0)
    bsz = batch.batch_size
    device = batch.boxes.device
    boxes_t = torch.zeros(bsz, m, 9, dtype=batch.boxes.dtype, device=device)
    labels_t = torch.full((bsz, m), -1, dtype=torch.long, device=device)
    mask_t = torch.zeros(bsz, m, dtype=torch.bool, device=device)
    npts_t = torch.full((bsz, m), -1, dtype=torch.long, device=device)
    for b in range(bsz):
        k = int(new_boxes[b].shape[0])
        boxes_t[b, :k] = new_boxes[b]
        labels_t[b, :k] = new_labels[b]
        mask_t[b, :k] = True
        n_gt = int(batch.box_mask[b].sum())
        npts_t[b, :n_gt] = batch.num_points[b, :n_gt]
    return dataclasses.replace(batch, boxes=boxes_t, labels=labels_t, box_mask=mask_t, num_points=npts_t,
                               boxes_list=new_boxes, labels_list=new_labels)


# ----------------------------------------------------------------------------- student input


def beam_downsample_batch(batch: Batch, config: StudentInputConfig) -> Batch:
    """The batch with every sample's points reduced to every ``beam_keep_every``-th beam
    (:class:`~distill3d.data.transforms.BeamDownsample`, beams found by elevation), the GT
    unchanged; re-collated on the batch's device."""
    from distill3d.data.transforms import BeamDownsample

    if config.beam_keep_every == 1:
        return batch
    if not batch.samples:
        raise ValueError("beam-gap distillation needs the batch's samples (Batch.samples) to downsample their points")
    op = BeamDownsample(keep_every=config.beam_keep_every, num_beams=config.beams, offset=config.beam_offset)
    samples = [op(s) for s in batch.samples]
    out = collate_samples(samples)
    return out.to(batch.points.device)


def student_input_batch(batch: Batch, config: StudentInputConfig | None) -> Batch:
    """The student's copy of ``batch``: ``config``'s transform applied (see
    :func:`beam_downsample_batch`), ``batch`` itself without one."""
    return batch if config is None else beam_downsample_batch(batch, config)


class StudentInputDetector(nn.Module):
    """A detector that predicts on its training input: ``distill3d test`` of a student that
    was distilled on a transformed input (beam-gap KD: every n-th beam) sees that input, as
    the evaluation during its distillation did.

    Args:
        detector: the student detector (``forward(batch) -> DetectorOutput`` and ``decode``).
        config: the student input transformation of the distillation config.
    """

    def __init__(self, detector: nn.Module, config: StudentInputConfig) -> None:
        super().__init__()
        self.detector = detector
        self.config = config

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """The detector's detections on the transformed copy of ``batch``."""
        return self.detector.decode(self.detector(beam_downsample_batch(batch, self.config)))


# ----------------------------------------------------------------------------- terms


@dataclasses.dataclass
class _Term:
    """A built term: parsed sides, the loss class's input kind and the alignment policy."""

    config: TermConfig
    student: TapSpec
    teacher: TapSpec
    input_kind: str


class Distiller(nn.Module):
    """Teacher, student, adapters and terms (see the module docstring).

    Args:
        student: the student detector (trained).
        teacher: the teacher detector (frozen here, in place).
        config: the ``distill`` section: terms, teacher BN mode, label KD, student input.
        teacher_source: optional supplier of the teacher's outputs (the teacher cache);
            when it returns None for a batch the live teacher runs.
        probe: the batch used to check the wiring (default: :func:`probe_batch` in the
            student's range with both models' point features).

    Raises:
        TermError: a term that cannot be wired, naming the term and the bad key.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, *,
                 teacher_source: TeacherSource | None = None, probe: Batch | None = None) -> None:
        super().__init__()
        self.config = config
        self.student = student
        self.teacher = freeze_teacher(teacher, config.teacher_bn_mode)
        self.teacher_source = teacher_source
        #: with a teacher cache: the training set cycles through this many augmentation seeds
        self.augmentation_cycle: int | None = None
        self.adapters = nn.ModuleDict()
        self.losses = nn.ModuleDict()
        self.terms: list[_Term] = []
        self._recorders = {
            "student": self._recorder(student, config.terms, "student"),
            "teacher": self._recorder(teacher, config.terms, "teacher"),
        }
        self._build_terms(probe if probe is not None else self._default_probe())

    # -- construction --------------------------------------------------------------

    @staticmethod
    def _recorder(model: nn.Module, terms: Sequence[TermConfig], side: str) -> ModuleRecorder | None:
        paths = []
        for term in terms:
            try:
                spec = TapSpec.parse(getattr(term, side))
            except ValueError as exc:
                raise TermError(f"distill.terms[{term.name}].{side}: {exc}") from None
            if spec.kind == "module" and spec.name not in paths:
                paths.append(spec.name)
        if not paths:
            return None
        try:
            return ModuleRecorder(model, paths)
        except ValueError as exc:
            raise TermError(f"distill.terms: {side}: {exc}") from None

    def _default_probe(self) -> Batch:
        pcr = getattr(self.student, "point_cloud_range", None) or getattr(self.teacher, "point_cloud_range", None)
        if pcr is None:
            raise TermError("cannot probe the models: the student has no point_cloud_range; pass probe=<a Batch>")
        features: list[str] = []
        for model in (self.student, self.teacher):
            for name in getattr(model, "point_features", ("x", "y", "z", "intensity")):
                if name not in features:
                    features.append(name)
        classes = getattr(self.student, "class_names", ("car",))
        return probe_batch(pcr, features, classes)

    def _build_terms(self, probe: Batch) -> None:
        device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
        probe = probe.to(device)
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                s_out, t_out = self._forward_models(probe, probe, live_teacher=True)
        finally:
            self.student.train(was_training)
        for cfg in self.config.terms:
            self._build_term(cfg, s_out, t_out)

    def _build_term(self, cfg: TermConfig, s_out: DetectorOutput, t_out: DetectorOutput) -> None:
        where = f"distill.terms[{cfg.name}]"
        try:
            cls = loss_class(cfg.loss)
        except KeyError as exc:
            raise TermError(f"{where}.loss: {exc.args[0]}") from None
        term = _Term(cfg, TapSpec.parse(cfg.student), TapSpec.parse(cfg.teacher), cls.input_kind)
        try:
            s_in = resolve(term.student, self.student, s_out, self._recorders["student"], "student")
        except (KeyError, ValueError) as exc:
            raise TermError(f"{where}.student: {exc.args[0]}") from None
        try:
            t_in = resolve(term.teacher, self.teacher, t_out, self._recorders["teacher"], "teacher")
        except (KeyError, ValueError) as exc:
            raise TermError(f"{where}.teacher: {exc.args[0]}") from None
        s_ch, t_ch = self._check_kinds(term, s_in, t_in, where)
        adapter_out = s_ch
        if cfg.adapter is not None:
            if term.input_kind == "heads":
                raise TermError(f"{where}.adapter: head (logit) terms take no adapter, got {cfg.adapter!r}")
            adapter_kind = "voxels" if term.input_kind == "voxels" else "bev"
            try:
                self.adapters[cfg.name] = build_adapter(cfg.adapter, s_ch, t_ch, input_kind=adapter_kind,
                                                        upsample=cfg.adapter_upsample)
            except ValueError as exc:
                raise TermError(f"{where}.adapter: {exc}") from None
            adapter_out = t_ch
        if cls.needs_same_channels and term.input_kind != "heads" and adapter_out != t_ch:
            raise TermError(f"{where}: the student's {cfg.student!r} has {s_ch} channels and the teacher's "
                            f"{cfg.teacher!r} {t_ch}; loss {cfg.loss!r} compares them channel by channel: set "
                            f"adapter: conv1x1 (or another adapter) on this term")
        try:
            self.losses[cfg.name] = build_loss(cfg.loss, dict(cfg.params), adapter_out, t_ch)
        except (KeyError, ValueError, TypeError) as exc:
            raise TermError(f"{where}.params: {exc}") from None
        if term.input_kind == "bev":
            s_map = self._adapt(cfg.name, s_in)  # type: ignore[arg-type]
            try:
                align_pair(s_map, t_in, cfg.align)  # type: ignore[arg-type]
            except AlignmentError as exc:
                raise TermError(f"{where}: the student's and the teacher's maps cannot be aligned: {exc}") from None
        self.terms.append(term)

    def _check_kinds(self, term: _Term, s_in: Any, t_in: Any, where: str) -> tuple[int, int]:
        kind = term.input_kind
        cfg = term.config
        if kind == "heads":
            if not isinstance(s_in, HeadMaps) or not isinstance(t_in, HeadMaps):
                raise TermError(f"{where}: loss {cfg.loss!r} distils head outputs: set student: heads and "
                                f"teacher: heads (got {cfg.student!r}, {cfg.teacher!r})")
            if s_in.tasks != t_in.tasks:
                raise TermError(f"{where}: the student's head tasks {s_in.tasks} differ from the teacher's "
                                f"{t_in.tasks}; logit KD needs the same classes per task")
            try:
                check_alignable(s_in.grid, t_in.grid)
            except AlignmentError as exc:
                raise TermError(f"{where}: head grids cannot be aligned: {exc}") from None
            return 0, 0
        for side, value in (("student", s_in), ("teacher", t_in)):
            if not isinstance(value, Tap):
                raise TermError(f"{where}.{side}: loss {cfg.loss!r} takes {kind} features, not head outputs")
            want = ("voxels", "points") if kind == "voxels" else ("bev",)
            if value.kind not in want:
                raise TermError(f"{where}.{side}: loss {cfg.loss!r} takes {kind} features but "
                                f"{getattr(cfg, side)!r} is a {value.kind!r} tap")
        if kind == "voxels":
            s_grid, t_grid = s_in.grid, t_in.grid
            if s_grid is not None and t_grid is not None and not grids_equal(s_grid, t_grid):
                raise TermError(f"{where}: {cfg.loss!r} compares the same voxels of both models, but the student's "
                                f"{cfg.student!r} grid ({s_grid.height}x{s_grid.width} cells) differs from the "
                                f"teacher's ({t_grid.height}x{t_grid.width}); use a BEV tap (e.g. "
                                f"pointdistiller_bev on 'bev') when voxel sizes differ")
        return int(s_in.tensor.shape[1]), int(t_in.tensor.shape[1])

    # -- modes and state -----------------------------------------------------------

    def train(self, mode: bool = True) -> Distiller:
        """Train or eval mode for the student, adapters and losses; the teacher keeps its
        frozen mode."""
        super().train(mode)
        freeze_teacher(self.teacher, self.config.teacher_bn_mode)
        return self

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """Student, adapters and loss modules; the teacher's weights are left out (they
        come from its own checkpoint)."""
        state = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [k for k in state if k.startswith(prefix + "teacher.")]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load a distiller state (without teacher keys; the teacher keeps its weights)."""
        merged = dict(state_dict)
        for key, value in self.teacher.state_dict(keep_vars=True).items():
            merged.setdefault(f"teacher.{key}", value)
        return super().load_state_dict(merged, strict=strict, assign=assign)

    def configure_train_dataset(self, dataset: Any) -> None:
        """Called by the training command with the training set: with a teacher cache,
        make it draw only the cached augmentation seeds."""
        if self.augmentation_cycle is not None:
            if not hasattr(dataset, "augmentation_cycle"):
                raise ConfigError(f"{type(dataset).__name__} cannot cycle augmentation seeds; distil without the "
                                  "teacher cache")
            dataset.augmentation_cycle = self.augmentation_cycle

    def export_student(self) -> nn.Module:
        """The student alone (adapters, loss modules and teacher dropped), for export."""
        return self.student

    # -- forward -------------------------------------------------------------------

    def student_batch(self, batch: Batch) -> Batch:
        """The student's copy of ``batch`` (the configured student input transform)."""
        return student_input_batch(batch, self.config.student_input)

    def _forward_models(self, batch: Batch, s_batch: Batch, *, live_teacher: bool = False
                        ) -> tuple[DetectorOutput, DetectorOutput]:
        for recorder in self._recorders.values():
            if recorder is not None:
                recorder.clear()
        t_out = None if live_teacher or self.teacher_source is None else self.teacher_source(batch)
        if t_out is None:
            with torch.no_grad():
                t_out = self.teacher(batch)
        s_out = self.student(s_batch)
        return s_out, t_out

    def _adapt(self, name: str, tap: Tap) -> Tap:
        if name not in self.adapters:
            return tap
        out = self.adapters[name](tap.tensor)
        grid = tap.grid
        if grid is not None and tap.kind == "bev" and out.shape[-2:] != tap.tensor.shape[-2:]:
            grid = dataclasses.replace(grid, height=int(out.shape[-2]), width=int(out.shape[-1]))
        return Tap(out, tap.kind, grid, tap.index)

    def _term_inputs(self, term: _Term, s_out: DetectorOutput, t_out: DetectorOutput) -> tuple[Any, Any]:
        cfg = term.config
        s_in = resolve(term.student, self.student, s_out, self._recorders["student"], "student")
        t_in = resolve(term.teacher, self.teacher, t_out, self._recorders["teacher"], "teacher")
        if term.input_kind == "heads":
            if not grids_equal(s_in.grid, t_in.grid):
                if cfg.align == "student":
                    t_in = HeadMaps([{k: resample_bev(v, t_in.grid, s_in.grid) for k, v in h.items()}
                                     for h in t_in.heads], s_in.grid, t_in.tasks)
                else:
                    s_in = HeadMaps([{k: resample_bev(v, s_in.grid, t_in.grid) for k, v in h.items()}
                                     for h in s_in.heads], t_in.grid, s_in.tasks)
            return s_in, t_in
        s_in = self._adapt(cfg.name, s_in)
        if term.input_kind == "bev":
            s_map, t_map, grid = align_pair(s_in, t_in, cfg.align)
            return Tap(s_map, "bev", grid), Tap(t_map.detach(), "bev", grid)
        if s_in.index is not None and t_in.index is not None and (
                s_in.index.shape != t_in.index.shape or not torch.equal(s_in.index, t_in.index)):
            raise ValueError(f"term {cfg.name!r}: the student's {cfg.student!r} and the teacher's {cfg.teacher!r} "
                             f"hold different voxels ({s_in.index.shape[0]} vs {t_in.index.shape[0]}); "
                             "voxel terms need both models on the same points and voxel grid")
        return s_in, Tap(t_in.tensor.detach(), t_in.kind, t_in.grid, t_in.index)

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """One training step's losses: ``det.*`` (the student's own), ``kd.<term>``
        (weighted), ``kd`` and ``loss`` (the total), float32 scalars."""
        s_batch = self.student_batch(batch)
        s_out, t_out = self._forward_models(batch, s_batch)
        ctx = KDContext(batch=s_batch, student=s_out, teacher=t_out,
                        class_names=tuple(getattr(self.student, "class_names", batch.class_names)),
                        decode_teacher=lambda: self.teacher.decode(t_out))
        target_batch = s_batch
        if self.config.label_kd is not None:
            target_batch = append_teacher_boxes(s_batch, ctx.teacher_detections(), self.teacher.class_names,
                                                self.config.label_kd, getattr(self.student, "head_grid", None))
        det = self.student.loss(target_batch, s_out)
        losses: dict[str, Tensor] = {f"det.{k}": v for k, v in det.items() if k != "loss"}
        kd_total = det["loss"].new_zeros(())
        for term in self.terms:
            s_in, t_in = self._term_inputs(term, s_out, t_out)
            loss_module: KDLoss = self.losses[term.config.name]  # type: ignore[assignment]
            value = term.config.weight * loss_module(s_in, t_in, ctx).float()
            losses[f"kd.{term.config.name}"] = value
            kd_total = kd_total + value
        losses["det"] = det["loss"]
        losses["kd"] = kd_total
        losses["loss"] = det["loss"] + kd_total
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """The student's detections (on its own input: beam-downsampled for beam-gap KD)."""
        s_batch = self.student_batch(batch)
        return self.student.decode(self.student(s_batch))

    def teacher_predict(self, batch: Batch) -> list[Detections]:
        """The teacher's detections on ``batch``."""
        with torch.no_grad():
            return self.teacher.decode(self.teacher(batch))
