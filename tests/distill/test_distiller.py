"""The distiller core: a frozen teacher, term wiring and its errors, module-path taps,
grid alignment, label KD, the student input transform, state dicts and every method preset
on a tiny CenterPoint-Pillar teacher/student pair."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill3d.config.schema import (
    DataConfig, DistillConfig, LabelKDConfig, ModelConfig, StudentInputConfig, TermConfig,
)
from distill3d.data.loader import collate_samples
from distill3d.data.sample import Sample
from distill3d.distill.distiller import Distiller, TermError, append_teacher_boxes, probe_batch
from distill3d.distill.methods import load_method, method_names
from distill3d.models.registry import build_detector
from distill3d.structures import BEVGrid, Detections

RANGE = (-12.8, -12.8, -5.0, 12.8, 12.8, 3.0)
CLASSES = ["car", "pedestrian"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def detector(width: float, pillar: float = 0.8):
    model = ModelConfig(type="centerpoint_pillar", width_multiplier=width, voxel_size=(pillar, pillar, 8.0),
                        blocks_per_stage=[1, 1, 1], max_points_per_voxel=None, max_voxels=None, nms_type="circle",
                        tasks=[CLASSES])
    data = DataConfig(dataset="synthdrive", class_names=list(CLASSES), point_cloud_range=RANGE)
    torch.manual_seed(0)
    return build_detector(model, data)


def term(name: str, student: str, teacher: str, loss: str, **kw) -> TermConfig:
    return TermConfig(name=name, student=student, teacher=teacher, loss=loss, **kw)


def batch(seed: int = 1):
    return probe_batch(RANGE, ("x", "y", "z", "intensity"), CLASSES, batch_size=2, points_per_sample=1500, seed=seed)


def test_teacher_weights_and_batchnorm_statistics_never_change() -> None:
    for bn_mode in ("eval", "train"):
        teacher, student = detector(0.5), detector(0.25)
        before = {k: v.clone() for k, v in teacher.state_dict().items()}
        cfg = DistillConfig(teacher_bn_mode=bn_mode, terms=[
            term("neck", "neck", "neck", "fitnet", adapter="conv1x1"),
            term("hm", "heads", "heads", "pp_logit", weight=15.0)])
        distiller = Distiller(student, teacher, cfg)
        optimizer = torch.optim.AdamW([p for p in distiller.parameters() if p.requires_grad], lr=1e-2)
        distiller.train()
        for step in range(3):
            losses = distiller(batch(step))
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
        assert not any(p.requires_grad for p in teacher.parameters())
        assert all(p.grad is None for p in teacher.parameters())
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, before[key]), (bn_mode, key)
        assert not teacher.training if bn_mode == "eval" else all(
            m.training for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_forward_logs_every_term_and_sums_the_total() -> None:
    cfg = DistillConfig(terms=[term("neck", "neck", "neck", "fitnet", adapter="conv1x1", weight=2.0),
                               term("att", "backbone.1", "backbone.1", "attention_transfer", weight=10.0)])
    distiller = Distiller(detector(0.25), detector(0.5), cfg).train()
    losses = distiller(batch())
    assert {"kd.neck", "kd.att", "kd", "det", "loss", "det.heatmap", "det.bbox"} <= set(losses)
    assert torch.allclose(losses["kd"], losses["kd.neck"] + losses["kd.att"])
    assert torch.allclose(losses["loss"], losses["det"] + losses["kd"])
    # the weight multiplies the loss module's value
    distiller.eval()
    s_out = distiller.student(batch())
    t_out = distiller.teacher(batch())
    adapted = distiller.adapters["neck"](s_out.taps["neck"].tensor)
    expected = 2.0 * (adapted - t_out.taps["neck"].tensor).pow(2).mean()
    assert torch.allclose(distiller(batch())["kd.neck"], expected, rtol=1e-4)


@pytest.mark.parametrize("bad, message", [
    (term("t1", "nope", "neck", "fitnet"), "distill.terms[t1].student: the student has no tap 'nope'"),
    (term("t2", "neck", "neck", "fitnes"), "distill.terms[t2].loss: unknown distillation loss 'fitnes'; did you "
                                           "mean fitnet"),
    (term("t3", "neck", "neck", "fitnet"), "has 96 channels and the teacher's 'neck' 192"),
    (term("t4", "heads", "heads", "pp_logit", adapter="conv1x1"), "head (logit) terms take no adapter"),
    (term("t5", "neck", "neck", "fitnet", adapter="conv1x1", params={"normalise": True}),
     "unknown parameter(s) 'normalise' (did you mean 'normalize'?)"),
    (term("t6", "neck", "heads", "fitnet", adapter="conv1x1"), "takes bev features, not head outputs"),
    (term("t7", "module:neck.nope", "neck", "fitnet"), "module path 'neck.nope' is not a submodule"),
    (term("t8", "pillars", "neck", "pointdistiller"), "is a 'bev' tap"),
])
def test_wrong_wiring_fails_at_build_naming_the_term_and_key(bad: TermConfig, message: str) -> None:
    with pytest.raises(TermError) as info:
        Distiller(detector(0.25), detector(0.5), DistillConfig(terms=[bad]))
    assert message in str(info.value)


def test_voxel_terms_need_the_same_pillar_grid() -> None:
    cfg = DistillConfig(terms=[term("local", "pillars", "pillars", "pointdistiller",
                                    params={"num_samples": 16, "knn": 4})])
    Distiller(detector(0.25), detector(0.5), cfg)  # same pillars: fine
    with pytest.raises(TermError, match="use a BEV tap"):
        Distiller(detector(0.25, pillar=0.8), detector(0.5, pillar=0.4), cfg)


def test_module_path_taps_capture_any_submodule_output() -> None:
    cfg = DistillConfig(terms=[term("hooked", "module:head.shared_conv", "module:head.shared_conv", "fitnet",
                                    adapter="conv1x1"),
                               term("named", "head.shared", "head.shared", "fitnet", adapter="conv1x1")])
    distiller = Distiller(detector(0.25), detector(0.5), cfg).eval()
    distiller.adapters["hooked"].load_state_dict(distiller.adapters["named"].state_dict())
    losses = distiller(batch())
    assert torch.allclose(losses["kd.hooked"], losses["kd.named"])


def test_maps_of_different_grids_are_aligned_by_their_metric_geometry() -> None:
    """A 0.8 m-pillar student against a 0.4 m-pillar teacher: BEV and head maps are
    resampled onto the teacher's grid; the loss equals the one on hand-resampled maps."""
    teacher, student = detector(0.5, pillar=0.4), detector(0.25, pillar=0.8)
    assert teacher.head_grid.shape == (32, 32) and student.head_grid.shape == (16, 16)
    cfg = DistillConfig(terms=[term("neck", "neck", "neck", "fitnet", adapter="conv1x1"),
                               term("hm", "heads", "heads", "hinton_heatmap")])
    distiller = Distiller(student, teacher, cfg).eval()
    b = batch()
    losses = distiller(b)
    s_out, t_out = student(b), teacher(b)
    adapted = distiller.adapters["neck"](s_out.taps["neck"].tensor)
    up = torch.nn.functional.interpolate(adapted, size=(32, 32), mode="bilinear", align_corners=False)
    # interior cells: bilinear upsampling by 2 equals grid_sample at the finer cell centres
    expected = (up - t_out.taps["neck"].tensor).pow(2)
    got_maps = distiller._term_inputs(distiller.terms[0], s_out, t_out)
    assert got_maps[0].tensor.shape[-2:] == (32, 32)
    assert torch.allclose(got_maps[0].tensor[..., 1:-1, 1:-1], up[..., 1:-1, 1:-1], atol=1e-5)
    assert torch.isfinite(losses["kd.hm"]) and float(expected.detach().mean()) > 0


def test_state_dict_holds_student_and_adapters_not_the_teacher() -> None:
    cfg = DistillConfig(terms=[term("neck", "neck", "neck", "fgd", adapter="conv1x1")])
    distiller = Distiller(detector(0.25), detector(0.5), cfg)
    state = distiller.state_dict()
    assert not any(k.startswith("teacher.") for k in state)
    assert any(k.startswith("adapters.neck.") for k in state) and any(k.startswith("losses.neck.gc_") for k in state)
    other = Distiller(detector(0.25), detector(0.5), cfg)
    with torch.no_grad():
        for p in other.student.parameters():
            p.add_(1.0)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.student.state_dict().values(),
                                                   distiller.student.state_dict().values()))
    assert distiller.export_student() is distiller.student


def test_label_kd_appends_confident_teacher_boxes_per_class_threshold() -> None:
    boxes = torch.tensor([[1.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])
    sample = Sample(token="s", points=torch.zeros(3, 4), boxes=boxes, labels=torch.tensor([0]),
                    class_names=("car", "pedestrian"))
    b = collate_samples([sample])
    det = Detections(torch.tensor([[1.2, 1.1, 0, 4, 2, 1.5, 0, 0, 0],    # same cell as the GT car: dedup
                                   [6.0, 6.0, 0, 4, 2, 1.5, 0, 0, 0],    # car 0.7: joins
                                   [-6.0, 6.0, 0, 0.7, 0.7, 1.7, 0, 0, 0],  # pedestrian 0.55: below 0.6
                                   [-6.0, -6.0, 0, 0.7, 0.7, 1.7, 0, 0, 0]]),  # pedestrian 0.65: joins
                     torch.tensor([0.9, 0.7, 0.55, 0.65]), torch.tensor([0, 0, 1, 1]))
    grid = BEVGrid(-12.8, -12.8, 12.8, 12.8, 16, 16)
    out = append_teacher_boxes(b, [det], ("car", "pedestrian"), LabelKDConfig(0.6, dedup=True), grid)
    assert out.labels_list[0].tolist() == [0, 0, 1]
    assert torch.allclose(out.boxes_list[0][1:, :2], torch.tensor([[6.0, 6.0], [-6.0, -6.0]]))
    assert out.box_mask.tolist() == [[True, True, True]] and out.num_points[0, 1:].tolist() == [-1, -1]
    per_class = append_teacher_boxes(b, [det], ("car", "pedestrian"), LabelKDConfig({"pedestrian": 0.5}, dedup=False))
    assert per_class.labels_list[0].tolist() == [0, 1, 1]
    no_dedup = append_teacher_boxes(b, [det], ("car", "pedestrian"), LabelKDConfig(0.6, dedup=False))
    assert no_dedup.labels_list[0].tolist() == [0, 0, 0, 1]


def test_student_input_transform_feeds_the_student_fewer_beams() -> None:
    from distill3d.synth.lidar import lidar_preset, scan_lidar  # noqa: F401 - presence check only

    # points on 8 rings of known elevation: beam-gap KD keeps every second ring
    elevations = torch.linspace(-20, 5, 8)
    az = torch.linspace(-3.1, 3.1, 200)
    rings = []
    for e in elevations:
        r = 10.0
        z = r * torch.tan(torch.deg2rad(e))
        rings.append(torch.stack([r * torch.cos(az), r * torch.sin(az), z.expand_as(az), torch.zeros_like(az)], 1))
    pts = torch.cat(rings)
    sample = Sample(token="r", points=pts, boxes=torch.zeros(0, 9), labels=torch.zeros(0, dtype=torch.long),
                    class_names=tuple(CLASSES))
    b = collate_samples([sample, sample])
    cfg = DistillConfig(student_input=StudentInputConfig(beam_keep_every=2, beams=8),
                        terms=[term("neck", "neck", "neck", "box_region_mimic", adapter="conv1x1")])
    distiller = Distiller(detector(0.25), detector(0.5), cfg)
    s_batch = distiller.student_batch(b)
    assert s_batch.points.shape[0] == b.points.shape[0] // 2
    kept = torch.unique(torch.round(torch.rad2deg(torch.atan2(s_batch.points[:, 2], torch.tensor(10.0)))))
    assert len(kept) == 4
    assert torch.isfinite(distiller.train()(b)["loss"])


@pytest.mark.parametrize("method", [m for m in method_names() if m != "pointdistiller_voxel"])
def test_every_pillar_method_preset_builds_and_trains_a_step(method: str) -> None:
    preset = load_method(method)
    if preset.student_input is not None:
        preset = dataclasses.replace(preset, student_input=None)  # the probe batch has no beams
    teacher, student = detector(0.5), detector(0.25)
    if preset.teacher_guided_init:
        from distill3d.distill.init import teacher_guided_init

        teacher_guided_init(student, teacher.state_dict())
    distiller = Distiller(student, teacher, preset).train()
    losses = distiller(batch())
    assert all(torch.isfinite(v) for v in losses.values())
    assert {f"kd.{t.name}" for t in preset.terms} <= set(losses)
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
