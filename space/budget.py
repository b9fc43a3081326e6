"""Exact trainable-parameter count of the exported network (auxiliary head excluded), fast enough to call
thousands of times: every part listed by `space.network.layout` is counted in closed form, per module class.

`count_params_built` counts by building the parts on the meta device instead; tests check that the two agree,
and that both equal `sum(p.numel() for p in model.parameters())` of the exported model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from torch import nn

from space import network as N
from space.config import BUDGET, NUM_CLASSES, ArchConfig


def _conv_bn(cin: int, cout: int, kernel: int = 3, groups: int = 1, act: object = None, **_: object) -> int:
    return kernel * kernel * cin // groups * cout + 2 * cout


def _se(ch: int, base: int) -> int:
    red = max(8, base // 4)
    return ch * red + red + red * ch + ch


def _residual(cin: int, cout: int, stride: int, kernel: int, se: bool, **_: object) -> int:
    n = _conv_bn(cin, cout, kernel) + _conv_bn(cout, cout, kernel) + (_se(cout, cout) if se else 0)
    return n + (0 if stride == 1 and cin == cout else _conv_bn(cin, cout, 1))


def _inverted(cin: int, cout: int, kernel: int, se: bool, expansion: int, **_: object) -> int:
    mid = N.make_divisible(cin * expansion) if expansion != 1 else cin
    n = _conv_bn(cin, mid, 1) if expansion != 1 else 0
    return n + _conv_bn(mid, mid, kernel, mid) + (_se(mid, cin) if se else 0) + _conv_bn(mid, cout, 1)


def _ds(cin: int, cout: int, kernel: int, se: bool, **_: object) -> int:
    return _conv_bn(cin, cin, kernel, cin) + (_se(cin, cin) if se else 0) + _conv_bn(cin, cout, 1)


def _sep(cin: int, cout: int) -> int:
    return _conv_bn(cin, cin, 3, cin) + _conv_bn(cin, cout, 1)


def _aspp(cin: int, cout: int, rates: tuple[int, ...], **_: object) -> int:
    branches = _conv_bn(cin, cout, 1) + len(rates) * _sep(cin, cout) + cin * cout + cout
    return branches + _conv_bn(cout * (len(rates) + 2), cout, 1)


def _ppm(cin: int, cout: int, **_: object) -> int:
    mid, bins = N.make_divisible(cin / 4), len(N.PyramidPool.BINS)
    return bins * (cin * mid + mid) + _sep(cin + mid * bins, cout)


def _detail(width: int, **_: object) -> int:
    half = N.make_divisible(width / 2)
    return _conv_bn(3, half) + _conv_bn(half, width) + _conv_bn(width, width)


def _cbam(ch: int) -> int:
    red = N.CBAM.reduced(ch)
    return ch * red + red + red * ch + ch + 2 * N.CBAM.KERNEL ** 2 + 1


def _decoder(cin: int, skip_chs: tuple[int, ...], skip_width: int, cout: int, depth: int, attention: bool = False,
             **_: object) -> int:
    chs = [cin + skip_width * len(skip_chs)] + [cout] * depth
    return (sum(_conv_bn(c, skip_width, 1) for c in skip_chs) + sum(_sep(a, b) for a, b in zip(chs[:-1], chs[1:]))
            + (_cbam(cout) if attention else 0))


def _head(in_channels: int, out_channels: int, kernel_size: int) -> int:
    return in_channels * out_channels * kernel_size * kernel_size + out_channels


def _aux(cin: int, mid: int, num_classes: int, **_: object) -> int:
    return _conv_bn(cin, mid) + _head(mid, num_classes, 1)


COUNTERS: dict[type, Callable[..., int]] = {
    N.ConvBNAct: _conv_bn, N.ResidualBlock: _residual, N.InvertedResidual: _inverted, N.DSBlock: _ds,
    N.ASPP: _aspp, N.PyramidPool: _ppm, N.DetailPath: _detail, N.DecoderStep: _decoder, nn.Conv2d: _head,
    N.AuxHead: _aux,
}


def part_params(p: N.Part) -> int:
    cls, kwargs = p
    return COUNTERS[cls](**dict(kwargs))


def count_params(cfg: ArchConfig, num_classes: int = NUM_CLASSES) -> int:
    """Trainable parameters of `build_model(cfg).drop_aux()`: equal to sum(p.numel() for p in parameters())."""
    return sum(part_params(p) for p in N.layout(cfg, num_classes).exported_parts())


@lru_cache(maxsize=4096)
def _built_part_params(p: N.Part) -> int:
    with torch.device("meta"):
        module = N.build_part(p)
    return sum(t.numel() for t in module.parameters() if t.requires_grad)


def count_params_built(cfg: ArchConfig, num_classes: int = NUM_CLASSES) -> int:
    """The same count, by building each part on the meta device (slow; the reference for tests)."""
    return sum(_built_part_params(p) for p in N.layout(cfg, num_classes).exported_parts())


def count_flops(cfg: ArchConfig, size: int) -> int:
    """FLOPs of one forward pass at size x size in eval mode (the aux head does not run), counted by
    `torch.utils.flop_counter` on the meta device: no weights are allocated and nothing is computed, so the cost
    does not grow with the size. Equal to the count of a real forward (tested)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = N.build_model(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size, device="meta"))
    return int(counter.get_total_flops())


def utilisation(params: int) -> float:
    return params / BUDGET
