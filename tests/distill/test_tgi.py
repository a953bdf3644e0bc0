"""Teacher-guided initialisation (SparseKD TGI): a x0.5 CenterPoint student narrowed from
its teacher (every tensor against an independently computed slice, the block-wise head
conv), forward passes, error listing, strict / non-strict missing keys, explicit blocks."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from distill3d.config import load_config
from distill3d.data.loader import Batch
from distill3d.distill.init import (
    NarrowReport,
    concat_input_blocks,
    narrow_state_dict,
    teacher_guided_init,
)
from distill3d.models import build_detector
from distill3d.models.base import Detector

# the shipped configs on a small range with fewer blocks (CPU time); widths as shipped
PILLAR = ("model.point_cloud_range=[-12.8,-12.8,-5.0,12.8,12.8,3.0]",  # 32 x 32 pillars
          "model.blocks_per_stage=[1,1,1]")
VOXEL = ("model.point_cloud_range=[-6.4,-6.4,-5.0,6.4,6.4,3.0]",  # 64 x 64 x 40 voxels
         "model.blocks_per_stage=[1,1]", "model.encoder_blocks=[1,1,1,1]")
HEAD_KEY = "head.shared_conv.0.weight"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def build(name: str, *overrides: str) -> Detector:
    cfg = load_config(f"synthdrive/{name}", list(overrides))
    return build_detector(cfg.model, cfg.data)


@pytest.fixture(scope="module")
def pillar_pair() -> tuple[Detector, Detector]:
    torch.manual_seed(0)
    return (build("centerpoint_pillar_teacher", *PILLAR),
            build("centerpoint_pillar_student_x0.5", *PILLAR))


@pytest.fixture(scope="module")
def voxel_pair() -> tuple[Detector, Detector]:
    torch.manual_seed(0)
    return (build("centerpoint_voxel_teacher", *VOXEL),
            build("centerpoint_voxel_teacher", *VOXEL, "model.width_multiplier=0.5"))


def random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every float tensor randomised (so slices are distinguishable;
    BatchNorm running variances kept positive)."""
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, value in model.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()
        elif key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.1
    return state


def expected_slice(key: str, t: torch.Tensor, shape: torch.Size, head_blocks: tuple[list[int], list[int]]) -> torch.Tensor:
    """The student tensor expected from teacher tensor ``t`` (computed here independently:
    leading slices; the head's shared conv takes the first ``s_k`` input channels of each
    teacher FPN level ``k``)."""
    if key == HEAD_KEY:
        t_levels, s_levels = head_blocks
        parts, start = [], 0
        for tc, sc in zip(t_levels, s_levels):
            parts.append(t[:, start:start + sc])
            start += tc
        t = torch.cat(parts, dim=1)
    for d, n in enumerate(shape):
        t = t.narrow(d, 0, n)
    return t


def random_batch(num: int = 300, batch_size: int = 2, extent: float = 6.0) -> Batch:
    """A minimal LiDAR-only batch of random points (x, y, z, intensity)."""
    gen = torch.Generator().manual_seed(3)
    pts = torch.cat([(torch.rand(num, 2, generator=gen) * 2 - 1) * extent, torch.rand(num, 1, generator=gen) * 2 - 1,
                     torch.rand(num, 1, generator=gen)], dim=1)
    per = num // batch_size
    bidx = torch.arange(num).div(per, rounding_mode="floor").clamp(max=batch_size - 1)
    offsets = torch.tensor([int((bidx < b).sum()) for b in range(batch_size + 1)])
    eye = torch.eye(4).expand(batch_size, 4, 4).clone()
    return Batch(tokens=[f"s{b}" for b in range(batch_size)], points=pts, point_offsets=offsets,
                 point_batch_index=bidx, point_features=("x", "y", "z", "intensity"),
                 boxes=torch.zeros(batch_size, 0, 9), box_mask=torch.zeros(batch_size, 0, dtype=torch.bool),
                 labels=torch.zeros(batch_size, 0, dtype=torch.long),
                 num_points=torch.zeros(batch_size, 0, dtype=torch.long),
                 boxes_list=[torch.zeros(0, 9)] * batch_size, labels_list=[torch.zeros(0, dtype=torch.long)] * batch_size,
                 class_names=("car",), bev_transform=eye, lidar_to_ego=eye, ego_to_global=eye.double(),
                 timestamps_us=torch.zeros(batch_size, dtype=torch.long))


def check_every_tensor(teacher: Detector, student: Detector, head_blocks: tuple[list[int], list[int]]) -> NarrowReport:
    t_state = random_state(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = teacher_guided_init(student, t_state)
    s_state = student.state_dict()
    assert set(report.copied) | set(report.narrowed) == set(s_state) and not report.skipped
    assert not set(report.copied) & set(report.narrowed)
    for key, s in s_state.items():
        expected = expected_slice(key, t_state[key], s.shape, head_blocks)
        assert torch.equal(s, expected.to(s.dtype)), key
        assert (key in report.copied) == (t_state[key].shape == s.shape)
    assert any(not torch.equal(before[k], s_state[k]) for k in s_state)
    return report


def test_pillar_student_narrowed_from_teacher(pillar_pair: tuple[Detector, Detector]) -> None:
    teacher, student = pillar_pair
    assert concat_input_blocks(teacher) == {HEAD_KEY: (128, 128, 128)}
    assert concat_input_blocks(student) == {HEAD_KEY: (64, 64, 64)}
    report = check_every_tensor(teacher, student, ([128, 128, 128], [64, 64, 64]))
    assert report.blockwise == [HEAD_KEY] and report.blocks[HEAD_KEY] == ((128, 128, 128), (64, 64, 64))
    assert "encoder.vfe.layers.0.norm.num_batches_tracked" in report.copied
    # block-wise differs from a plain leading slice: channels 64..127 of the student's
    # input are the teacher's level-1 channels 128..191
    t_state = random_state(teacher)
    head = student.state_dict()[HEAD_KEY]
    assert torch.equal(head[:, 64:128], t_state[HEAD_KEY][:32, 128:192, :, :])
    plain, _ = narrow_state_dict(t_state, student, input_blocks={})
    assert not torch.equal(plain[HEAD_KEY], head)

    student.train()
    out = student(random_batch(extent=12.0))
    assert all(torch.isfinite(m).all() for task in out.heads for m in task.values())
    assert out.taps["neck"].tensor.shape[1] == 192


def test_voxel_student_narrowed_from_teacher(voxel_pair: tuple[Detector, Detector]) -> None:
    teacher, student = voxel_pair
    report = check_every_tensor(teacher, student, ([256, 256], [128, 128]))
    assert report.blockwise == [HEAD_KEY]
    # the sparse conv weights (C_out, kz, ky, kx, C_in) are narrowed on their first and last dims
    key = next(k for k in report.narrowed if k.startswith("encoder.sparse") and student.state_dict()[k].dim() == 5)
    assert student.state_dict()[key].shape[-1] <= teacher.state_dict()[key].shape[-1]
    student.eval()
    with torch.no_grad():
        out = student(random_batch(num=200, extent=6.0))
    assert all(torch.isfinite(m).all() for task in out.heads for m in task.values())


def test_bigger_student_lists_every_offending_key(pillar_pair: tuple[Detector, Detector]) -> None:
    teacher, student = pillar_pair
    with pytest.raises(ValueError) as info:
        narrow_state_dict(student.state_dict(), teacher)  # the x1.0 model from the x0.5 state
    message = str(info.value)
    for key in ("encoder.vfe.layers.0.linear.weight", "backbone.blocks.2.0.weight", HEAD_KEY,
                "head.task_heads.0.heatmap.0.weight"):
        assert f"{key}: student" in message, key
    small = student.state_dict()
    bigger = [k for k, v in teacher.state_dict().items() if any(a > b for a, b in zip(v.shape, small[k].shape))]
    assert f"teacher-guided init: {len(bigger)} student tensor(s)" in message  # all of them, not the first
    assert all(f"{k}: student" in message for k in bigger)

    t_state = dict(teacher.state_dict())
    t_state["backbone.blocks.0.0.weight"] = t_state["backbone.blocks.0.0.weight"][:, :, 0]
    t_state["head.shared_conv.1.weight"] = t_state["head.shared_conv.1.weight"][:16]
    with pytest.raises(ValueError) as info:
        narrow_state_dict(t_state, student)
    assert "backbone.blocks.0.0.weight" in str(info.value) and "number of dimensions" in str(info.value)
    assert "head.shared_conv.1.weight: student (32,) is larger than teacher (16,)" in str(info.value)


def test_missing_keys_strict_and_not(pillar_pair: tuple[Detector, Detector]) -> None:
    teacher, student = pillar_pair
    t_state = random_state(teacher)
    missing = ["backbone.blocks.1.0.weight", "head.task_heads.0.reg.1.bias"]
    for key in missing:
        del t_state[key]
    t_state["extra.only.in.teacher"] = torch.ones(3)
    with pytest.raises(ValueError) as info:
        narrow_state_dict(t_state, student)
    assert all(f"{k}: missing from the teacher state" in str(info.value) for k in missing)

    kept = {k: student.state_dict()[k].clone() for k in missing}
    report = teacher_guided_init(student, t_state, strict=False)
    assert sorted(report.skipped) == sorted(missing) and set(report.reasons) == set(missing)
    assert "extra.only.in.teacher" not in report.copied + report.narrowed + report.skipped
    for key in missing:
        assert torch.equal(student.state_dict()[key], kept[key])
    assert torch.equal(student.state_dict()["backbone.blocks.1.1.weight"], t_state["backbone.blocks.1.1.weight"][:64])


def test_unknown_teacher_blocks_are_not_sliced_plainly(pillar_pair: tuple[Detector, Detector]) -> None:
    """Without the FPN widths in the teacher state the head conv's blocks are unknown: an
    error (strict) or skipped (non-strict), never a wrong plain leading slice."""
    teacher, student = pillar_pair
    t_state = random_state(teacher)
    del t_state["neck.deblocks.1.1.weight"]
    with pytest.raises(ValueError, match=f"{HEAD_KEY}: reads a concatenation"):
        narrow_state_dict(t_state, student)
    _, report = narrow_state_dict(t_state, student, strict=False)
    assert sorted(report.skipped) == sorted([HEAD_KEY, "neck.deblocks.1.1.weight"])
    assert "neck.deblocks.1.1.weight" in report.reasons[HEAD_KEY]


class Concat(nn.Module):
    """Two branches concatenated into a 1x1 conv (a toy concatenation point)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a = nn.Linear(3, width)
        self.b = nn.Linear(3, width)
        self.fuse = nn.Conv2d(2 * width, width, 1)


def test_explicit_input_blocks_on_a_generic_model() -> None:
    teacher, student = Concat(4), Concat(2)
    assert concat_input_blocks(teacher) == {}
    t_state = teacher.state_dict()
    state, report = narrow_state_dict(t_state, student, input_blocks={"fuse.weight": (4, 4)})
    assert torch.equal(state["fuse.weight"], t_state["fuse.weight"][:2][:, [0, 1, 4, 5]])
    assert report.blocks["fuse.weight"] == ((4, 4), (2, 2))
    assert torch.equal(state["a.weight"], t_state["a.weight"][:2])
    with pytest.raises(ValueError, match="split evenly"):
        narrow_state_dict(t_state, Concat(3), input_blocks={"fuse.weight": (4, 4), "fuse.bias": (4, 4)})
    with pytest.raises(ValueError, match="do not sum"):
        narrow_state_dict(t_state, student, input_blocks={"fuse.weight": (3, 3)})


def test_pfn_inner_layer_blocks() -> None:
    """A two-layer PFN: the second layer reads [point features | pillar max]."""
    teacher = build("centerpoint_pillar_teacher", *PILLAR, "model.encoder_channels=[64,64]")
    student = build("centerpoint_pillar_student_x0.5", *PILLAR, "model.encoder_channels=[64,64]")
    key = "encoder.vfe.layers.1.linear.weight"
    assert concat_input_blocks(teacher)[key] == (32, 32)
    t_state = random_state(teacher)
    state, report = narrow_state_dict(t_state, student)
    assert report.blocks[key] == ((32, 32), (16, 16))
    assert torch.equal(state[key], torch.cat([t_state[key][:32, :16], t_state[key][:32, 32:48]], dim=1))
