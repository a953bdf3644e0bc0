"""The ten nuScenes detection classes as SynthDrive models them.

One frozen :class:`ClassSpec` per class holds what the world generator needs (size priors,
typical speeds, the nuScenes categories and attributes to emit, the share of annotations the
class should have) and what the writers need (the KITTI class it maps to).

Sources and how close the numbers are:

* **Size means** ``(l, w, h)`` are the per-class means of the nuScenes ``trainval`` boxes
  used as anchor sizes by mmdetection3d's SSN config
  (``configs/ssn/hv_ssn_secfpn_sbn-all_2x16_2x_nus-3d.py``, given there as ``[w, l, h]``);
  OpenPCDet's ``cbgs_pp_multihead.yaml`` uses nearly the same values. Note nuScenes' barrier
  convention: its heading faces traffic, so the *long* side is the width (l 0.49, w 2.49).
* **Size spreads** (``size_std``) are approximate (read off published size histograms, not
  computed from the data): the generator only needs plausible variety.
* **Frequencies** are the shares of the 944,881 ``train`` annotations per class reported in
  Table 1 of the CBGS paper (Zhu et al., "Class-balanced Grouping and Sampling for Point Cloud
  3D Object Detection", arXiv:1908.09492), quoted from memory: car 413,318; pedestrian
  185,847; barrier 125,095; traffic cone 82,362; truck 72,815; trailer 20,701; bus 13,163;
  construction vehicle 11,993; motorcycle 10,109; bicycle 9,478. Treat them as approximate.
* **Speeds** are approximate urban speeds (Boston / Singapore city streets).

Box conventions follow the nuScenes annotator instructions
(``nuscenes-devkit/instructions.md``): boxes are tight, include pedestrians' extremities and
carried objects, include the rider of a bicycle or motorcycle (riders are not annotated on
their own), and *exclude* vehicles' side mirrors.

KITTI mapping (documented choice, see :func:`kitti_class`):

==============================  =========================================================
ours                            KITTI
==============================  =========================================================
car (subtype ``"van"``)         Van (about 12% of cars are modelled as vans)
car (other)                     Car
truck                           Truck (pick-ups, box trucks, dump trucks, semi tractors)
bus                             Misc (KITTI has no bus class; Misc is its "other vehicle")
trailer                         Misc (KITTI's own examples of Misc are trailers, segways)
construction_vehicle            Misc
pedestrian (sitting)            Person_sitting
pedestrian (other)              Pedestrian (adults, children, construction workers)
bicycle / motorcycle + rider    Cyclist (KITTI labels motorbike riders as Cyclist too)
bicycle / motorcycle, no rider  DontCare (KITTI does not label parked two-wheelers)
traffic_cone, barrier           DontCare (not KITTI classes; DontCare keeps detections
                                there from counting as false positives)
==============================  =========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

__all__ = [
    "ATTRIBUTE_NAMES",
    "CLASSES",
    "CLASS_BY_NAME",
    "CLASS_NAMES",
    "CYCLE_CLASSES",
    "KITTI_CLASSES",
    "NUSCENES_CATEGORIES",
    "VEHICLE_CLASSES",
    "ClassSpec",
    "attribute_for",
    "class_spec",
    "frequency_targets",
    "kitti_class",
    "sample_size",
]


@dataclass(frozen=True)
class ClassSpec:
    """Everything SynthDrive knows about one nuScenes detection class.

    Attributes:
        name: nuScenes detection name, e.g. ``"car"``.
        index: position in :data:`CLASS_NAMES` (the label index used by detectors).
        categories: full nuScenes category names this class is emitted as.
        category_weights: relative frequency of each category (sums to 1).
        size_mean: ``(l, w, h)`` metres, ``l`` along the heading.
        size_std: ``(l, w, h)`` standard deviations, metres.
        size_min: ``(l, w, h)`` lower clip, metres.
        size_max: ``(l, w, h)`` upper clip, metres.
        speed_range: ``(min, max)`` typical speed when moving, m/s (``(0, 0)`` for static
            classes).
        attributes: nuScenes attribute names allowed for the class (empty for cones and
            barriers).
        kitti: KITTI class of the typical instance (see :func:`kitti_class` for the exceptions).
        frequency: target share of all annotations (sums to 1 over the classes).
    """

    name: str
    index: int
    categories: tuple[str, ...]
    category_weights: tuple[float, ...]
    size_mean: tuple[float, float, float]
    size_std: tuple[float, float, float]
    size_min: tuple[float, float, float]
    size_max: tuple[float, float, float]
    speed_range: tuple[float, float]
    attributes: tuple[str, ...]
    kitti: str
    frequency: float


_VEHICLE_ATTRS = ("vehicle.moving", "vehicle.parked", "vehicle.stopped")
_PED_ATTRS = ("pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down")
_CYCLE_ATTRS = ("cycle.with_rider", "cycle.without_rider")

#: Annotations per class in the nuScenes *train* split: CBGS paper (Zhu et al., "Class-balanced
#: Grouping and Sampling for Point Cloud 3D Object Detection", arXiv:1908.09492, Table 1).
#: They set SynthDrive's target class frequencies and the reference in ``synth.stats``.
NUSCENES_TRAIN_COUNTS: dict[str, int] = {
    "car": 413_318,
    "truck": 72_815,
    "bus": 13_163,
    "trailer": 20_701,
    "construction_vehicle": 11_993,
    "pedestrian": 185_847,
    "motorcycle": 10_109,
    "bicycle": 9_478,
    "traffic_cone": 82_362,
    "barrier": 125_095,
}
_TOTAL = float(sum(NUSCENES_TRAIN_COUNTS.values()))


def _spec(
    index: int,
    name: str,
    categories: tuple[tuple[str, float], ...],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    lo: tuple[float, float, float],
    hi: tuple[float, float, float],
    speed: tuple[float, float],
    attributes: tuple[str, ...],
    kitti: str,
) -> ClassSpec:
    weights = np.array([w for _, w in categories], dtype=np.float64)
    weights = weights / weights.sum()
    return ClassSpec(
        name=name,
        index=index,
        categories=tuple(c for c, _ in categories),
        category_weights=tuple(float(w) for w in weights),
        size_mean=mean,
        size_std=std,
        size_min=lo,
        size_max=hi,
        speed_range=speed,
        attributes=attributes,
        kitti=kitti,
        frequency=NUSCENES_TRAIN_COUNTS[name] / _TOTAL,
    )


CLASSES: tuple[ClassSpec, ...] = (
    _spec(0, "car", (("vehicle.car", 1.0),),
          (4.61, 1.95, 1.72), (0.45, 0.16, 0.22), (3.3, 1.55, 1.35), (5.9, 2.35, 2.45),
          (5.0, 14.0), _VEHICLE_ATTRS, "Car"),
    _spec(1, "truck", (("vehicle.truck", 1.0),),
          (6.74, 2.46, 2.73), (1.9, 0.28, 0.55), (4.8, 1.85, 1.75), (11.0, 2.6, 4.1),
          (4.0, 12.0), _VEHICLE_ATTRS, "Truck"),
    _spec(2, "bus", (("vehicle.bus.rigid", 1.0),),
          (11.19, 2.94, 3.47), (1.6, 0.12, 0.3), (7.5, 2.4, 2.8), (14.5, 3.2, 4.2),
          (4.0, 11.0), _VEHICLE_ATTRS, "Misc"),
    _spec(3, "trailer", (("vehicle.trailer", 1.0),),
          (12.01, 2.87, 3.82), (3.5, 0.2, 0.6), (2.5, 1.6, 1.0), (15.5, 2.95, 4.2),
          (4.0, 11.0), _VEHICLE_ATTRS, "Misc"),
    _spec(4, "construction_vehicle", (("vehicle.construction", 1.0),),
          (6.38, 2.73, 3.13), (1.3, 0.3, 0.45), (3.5, 1.8, 2.2), (9.5, 3.3, 4.2),
          (0.5, 3.0), _VEHICLE_ATTRS, "Misc"),
    _spec(5, "pedestrian",
          (("human.pedestrian.adult", 0.88), ("human.pedestrian.child", 0.04),
           ("human.pedestrian.construction_worker", 0.08)),
          (0.73, 0.66, 1.76), (0.16, 0.1, 0.12), (0.3, 0.45, 0.95), (1.05, 0.9, 2.05),
          (0.9, 1.7), _PED_ATTRS, "Pedestrian"),
    _spec(6, "motorcycle", (("vehicle.motorcycle", 1.0),),
          (2.10, 0.76, 1.44), (0.22, 0.1, 0.22), (1.6, 0.55, 1.0), (2.6, 1.0, 1.85),
          (6.0, 13.0), _CYCLE_ATTRS, "Cyclist"),
    _spec(7, "bicycle", (("vehicle.bicycle", 1.0),),
          (1.68, 0.60, 1.27), (0.12, 0.08, 0.3), (1.4, 0.45, 0.85), (2.0, 0.8, 1.95),
          (2.5, 6.5), _CYCLE_ATTRS, "Cyclist"),
    _spec(8, "traffic_cone", (("movable_object.trafficcone", 1.0),),
          (0.40, 0.40, 1.06), (0.08, 0.08, 0.2), (0.25, 0.25, 0.45), (0.65, 0.65, 1.3),
          (0.0, 0.0), (), "DontCare"),
    _spec(9, "barrier", (("movable_object.barrier", 1.0),),
          (0.49, 2.49, 0.98), (0.12, 0.45, 0.12), (0.3, 1.2, 0.7), (0.8, 3.5, 1.3),
          (0.0, 0.0), (), "DontCare"),
)
"""The ten classes in the nuScenes detection order (``DETECTION_NAMES`` of the devkit)."""

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_BY_NAME: Mapping[str, ClassSpec] = MappingProxyType({c.name: c for c in CLASSES})

VEHICLE_CLASSES: frozenset[str] = frozenset(
    {"car", "truck", "bus", "trailer", "construction_vehicle"}
)
"""Classes whose attribute is vehicle.moving / parked / stopped."""

CYCLE_CLASSES: frozenset[str] = frozenset({"bicycle", "motorcycle"})
"""Classes whose attribute is cycle.with_rider / without_rider."""

ATTRIBUTE_NAMES: tuple[str, ...] = (
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
)
"""The eight nuScenes attributes (all of them; the attribute table lists these)."""

NUSCENES_CATEGORIES: tuple[str, ...] = (
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
)
"""All 23 nuScenes v1.0 categories (the category table lists these; SynthDrive emits only the
ones named in :data:`CLASSES`)."""

KITTI_CLASSES: tuple[str, ...] = (
    "Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare",
)


def class_spec(name: str) -> ClassSpec:
    """The :class:`ClassSpec` of detection class ``name``; ``KeyError`` names the valid ones."""
    try:
        return CLASS_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown class {name!r}; valid: {', '.join(CLASS_NAMES)}") from None


def sample_size(name: str, rng: np.random.Generator) -> np.ndarray:
    """Draw ``(l, w, h)`` (3,) float64 metres for class ``name`` from its prior.

    A normal draw around ``size_mean`` with ``size_std``, clipped to
    ``[size_min, size_max]``. Builders may further adapt parts (e.g. the height of a bicycle
    depends on whether it has a rider).
    """
    spec = class_spec(name)
    mean = np.asarray(spec.size_mean, dtype=np.float64)
    std = np.asarray(spec.size_std, dtype=np.float64)
    size = mean + std * rng.standard_normal(3)
    return np.clip(size, spec.size_min, spec.size_max)


def attribute_for(name: str, speed: float, *, parked: bool = False, sitting: bool = False,
                  rider: bool = True) -> str:
    """nuScenes attribute of an object of class ``name`` moving at ``speed`` m/s.

    Vehicles: ``vehicle.moving`` above 0.5 m/s, else ``vehicle.parked`` if ``parked`` else
    ``vehicle.stopped``. Pedestrians: ``pedestrian.sitting_lying_down`` if ``sitting``, else
    ``pedestrian.moving`` above 0.5 m/s, else ``pedestrian.standing``. Cycles: with or without
    rider. Cones and barriers: ``""``.
    """
    if name in VEHICLE_CLASSES:
        if speed > 0.5:
            return "vehicle.moving"
        return "vehicle.parked" if parked else "vehicle.stopped"
    if name == "pedestrian":
        if sitting:
            return "pedestrian.sitting_lying_down"
        return "pedestrian.moving" if speed > 0.5 else "pedestrian.standing"
    if name in CYCLE_CLASSES:
        return "cycle.with_rider" if rider else "cycle.without_rider"
    return ""


def kitti_class(name: str, attribute: str = "", subtype: str = "") -> str:
    """KITTI class of one of our objects (see the module docstring for the table).

    Args:
        name: detection class, e.g. ``"car"``.
        attribute: nuScenes attribute of the object at that instant.
        subtype: :attr:`~distill3d.synth.types.AnnotatedObject.subtype` (``"van"`` makes a
            car a KITTI Van).
    """
    spec = class_spec(name)
    if name == "car" and subtype == "van":
        return "Van"
    if name == "pedestrian" and attribute == "pedestrian.sitting_lying_down":
        return "Person_sitting"
    if name in CYCLE_CLASSES:
        return "Cyclist" if attribute != "cycle.without_rider" else "DontCare"
    return spec.kitti


def frequency_targets() -> dict[str, float]:
    """Target share of annotations per class, ``{name: share}`` summing to 1."""
    return {c.name: c.frequency for c in CLASSES}
