"""KD-only adapters: learnable maps from the student's features to the teacher's channels
(methods.md sections 0 and 10.2).

An adapter ``phi`` turns the student feature ``F_S`` into ``S' = phi(F_S)`` in the teacher's
space. It is trained with the student and dropped at export. Built with
:func:`build_adapter`:

============================  ==========================================  =====================
kind                          dense input ``(B, C_in, H, W)``             sparse input ``(V, C_in)``
============================  ==========================================  =====================
``None`` / ``"identity"``     ``nn.Identity`` (requires ``C_in == C_out``)  same
``"conv1x1"``                 1x1 conv with bias                          error: use mlp/linear
``"conv3x3"``                 3x3 conv, padding 1                         error: use mlp/linear
``"conv1x1_bn_relu"``         1x1 conv (no bias), BN, ReLU                error: use mlp/linear
``"upsample_conv"``           nearest x``upsample`` then 3x3 conv         error: use mlp/linear
``"mlp"``                     1x1 conv, ReLU, 1x1 conv (per-cell MLP)     Linear, ReLU, Linear
``"linear"``                  1x1 conv with bias (per-cell linear)        ``nn.Linear``
============================  ==========================================  =====================

Dense inputs are ``bev`` (and ``image``) taps, output ``(B, C_out, H', W')`` with
``H' = H * upsample`` for ``upsample_conv`` and ``H`` otherwise; sparse inputs are
``voxels`` / ``points`` taps, ``(V, C_in) -> (V, C_out)`` (any leading dims work).

Weights of convs and linears are initialised with Kaiming normal (``fan_out``, ReLU) and
zero biases, as is common in KD code; BatchNorm starts at weight 1, bias 0.
"""

from __future__ import annotations

import difflib

from torch import nn

ADAPTER_KINDS: tuple[str, ...] = (
    "identity", "conv1x1", "conv3x3", "conv1x1_bn_relu", "upsample_conv", "mlp", "linear",
)
DENSE_INPUT_KINDS: tuple[str, ...] = ("bev", "image")
SPARSE_INPUT_KINDS: tuple[str, ...] = ("voxels", "points")
_CONV_ONLY = ("conv1x1", "conv3x3", "conv1x1_bn_relu", "upsample_conv")


def init_adapter_weights(module: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU) weights and zero biases for every conv/linear of
    ``module``; BatchNorm weight 1, bias 0. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _check_kind(kind: str) -> None:
    if kind not in ADAPTER_KINDS:
        close = difflib.get_close_matches(str(kind), list(ADAPTER_KINDS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown adapter kind {kind!r}{hint} (valid: None, {', '.join(ADAPTER_KINDS)})")


def _check_args(kind: str, in_channels: int, out_channels: int, input_kind: str, upsample: int,
                hidden: int | None) -> None:
    """Validate :func:`build_adapter`'s arguments (``kind`` already known)."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"adapter {kind!r}: {name} must be a positive int, got {value!r}")
    if input_kind not in DENSE_INPUT_KINDS + SPARSE_INPUT_KINDS:
        raise ValueError(f"adapter {kind!r}: unknown input_kind {input_kind!r} "
                         f"(valid: {', '.join(DENSE_INPUT_KINDS + SPARSE_INPUT_KINDS)})")
    if input_kind in SPARSE_INPUT_KINDS and kind in _CONV_ONLY:
        raise ValueError(f"adapter {kind!r} is a 2-D conv and cannot take {input_kind!r} (V, C) features; "
                         f"use 'mlp' or 'linear'")
    if kind == "upsample_conv":
        if not isinstance(upsample, int) or isinstance(upsample, bool) or upsample < 2:
            raise ValueError(f"adapter 'upsample_conv' needs an integer upsample >= 2, got {upsample!r}")
    elif upsample != 1:
        raise ValueError(f"adapter {kind!r} does not upsample (got upsample={upsample!r}); use 'upsample_conv'")
    if hidden is not None:
        if kind != "mlp":
            raise ValueError(f"adapter {kind!r} takes no hidden width (got hidden={hidden!r}); only 'mlp' does")
        if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1:
            raise ValueError(f"adapter 'mlp': hidden must be a positive int, got {hidden!r}")


def _identity(in_channels: int, out_channels: int, input_kind: str) -> nn.Module:
    if in_channels != out_channels:
        fix = "'conv1x1'" if input_kind in DENSE_INPUT_KINDS else "'linear'"
        raise ValueError(f"identity adapter needs in_channels == out_channels, got {in_channels} -> "
                         f"{out_channels}; use {fix} (or another learnable adapter) to change channels")
    return nn.Identity()


def _mlp(in_channels: int, out_channels: int, hidden: int, dense: bool) -> nn.Module:
    """Linear-ReLU-Linear on the channel dim: 1x1 convs for dense maps, linears for (V, C)."""
    if dense:
        return nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
                             nn.Conv2d(hidden, out_channels, 1))
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_channels))


def build_adapter(kind: str | None, in_channels: int, out_channels: int, *, input_kind: str = "bev",
                  upsample: int = 1, hidden: int | None = None) -> nn.Module:
    """Build a KD adapter from the student's ``in_channels`` to the teacher's ``out_channels``.

    Args:
        kind: ``None`` or one of :data:`ADAPTER_KINDS` (see the module docstring's table).
        in_channels, out_channels: student and teacher channels.
        input_kind: ``"bev"`` / ``"image"`` for ``(B, C, H, W)`` maps, ``"voxels"`` /
            ``"points"`` for ``(V, C)`` features.
        upsample: integer factor >= 2 for ``"upsample_conv"``; must stay 1 otherwise.
        hidden: the hidden width of ``"mlp"`` (default ``max(in_channels, out_channels)``).

    Returns:
        A freshly initialised module; its parameters require grad.

    Raises:
        ValueError: unknown kind (with the closest valid one), identity with different
            channels (suggesting ``conv1x1``/``linear``), a conv kind on ``(V, C)`` features
            (suggesting ``mlp``/``linear``), or a bad ``upsample`` / ``hidden`` / channels.
    """
    kind = "identity" if kind is None else kind
    _check_kind(kind)
    _check_args(kind, in_channels, out_channels, input_kind, upsample, hidden)
    dense = input_kind in DENSE_INPUT_KINDS
    if kind == "identity":
        return _identity(in_channels, out_channels, input_kind)
    if kind == "conv1x1" or (kind == "linear" and dense):
        module: nn.Module = nn.Conv2d(in_channels, out_channels, 1, bias=True)
    elif kind == "linear":
        module = nn.Linear(in_channels, out_channels)
    elif kind == "conv3x3":
        module = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    elif kind == "conv1x1_bn_relu":
        module = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    elif kind == "upsample_conv":
        module = nn.Sequential(nn.Upsample(scale_factor=upsample, mode="nearest"),
                               nn.Conv2d(in_channels, out_channels, 3, padding=1))
    else:  # mlp
        module = _mlp(in_channels, out_channels, hidden or max(in_channels, out_channels), dense)
    return init_adapter_weights(module)
