"""The face-parsing network family: an encoder of residual / inverted-residual / depthwise-separable stages
(dilated past the output stride), an optional BiSeNet-style detail path, a context module (ASPP, pyramid
pooling, or none) and a skip decoder at 1/8 and/or 1/4 (and 1/2), each step optionally followed by CBAM attention.

`layout(cfg)` lists every part as (module class, constructor arguments); the model is built from that list and
`space.budget` counts parameters from the same list, so the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from space.config import NUM_CLASSES, ArchConfig

NOMINAL_STRIDE = 32  # inputs are padded to a multiple of this


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `v` (timm's rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _act(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU}[name](inplace=True)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                 groups: int = 1, act: str | None = "relu"):
        pad = dilation * (kernel - 1) // 2
        layers = [nn.Conv2d(cin, cout, kernel, stride, pad, dilation, groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(ch, reduced, 1)
        self.expand = nn.Conv2d(reduced, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


def _se(ch: int, base: int) -> nn.Module:
    return SqueezeExcite(ch, max(8, base // 4))


class ResidualBlock(nn.Module):
    """Two k x k convolutions with a shortcut (ResNet basic block)."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, kernel: int, se: bool, act: str,
                 expansion: int = 1):
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, kernel, stride, dilation, act=act)
        self.conv2 = ConvBNAct(cout, cout, kernel, 1, dilation, act=None)
        self.se = _se(cout, cout) if se else nn.Identity()
        self.short = (nn.Identity() if stride == 1 and cin == cout
                      else ConvBNAct(cin, cout, 1, stride, act=None))
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.conv2(self.conv1(x))) + self.short(x))


class InvertedResidual(nn.Module):
    """1x1 expand, k x k depthwise, optional SE, 1x1 project; identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, kernel: int, se: bool, act: str,
                 expansion: int = 4):
        super().__init__()
        mid = make_divisible(cin * expansion)
        self.expand = ConvBNAct(cin, mid, 1, act=act) if expansion != 1 else nn.Identity()
        mid = mid if expansion != 1 else cin
        self.dw = ConvBNAct(mid, mid, kernel, stride, dilation, groups=mid, act=act)
        self.se = _se(mid, cin) if se else nn.Identity()
        self.project = ConvBNAct(mid, cout, 1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


class DSBlock(nn.Module):
    """k x k depthwise then 1x1 pointwise (MobileNetV1 / U-Net style); identity shortcut when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, kernel: int, se: bool, act: str,
                 expansion: int = 1):
        super().__init__()
        self.dw = ConvBNAct(cin, cin, kernel, stride, dilation, groups=cin, act=act)
        self.se = _se(cin, cin) if se else nn.Identity()
        self.pw = ConvBNAct(cin, cout, 1, act=act)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.se(self.dw(x)))
        return x + y if self.residual else y


BLOCK_CLASSES = {"res": ResidualBlock, "ir": InvertedResidual, "ds": DSBlock}


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al., 2018): a channel gate from the average- and max-pooled features
    through one shared bottleneck, then a spatial gate from the channel mean and max through a 7x7 conv."""

    KERNEL = 7  # of the spatial gate

    @staticmethod
    def reduced(ch: int) -> int:
        """Width of the channel gate's bottleneck."""
        return max(8, ch // 8)

    def __init__(self, ch: int):
        super().__init__()
        red = self.reduced(ch)
        self.mlp = nn.Sequential(nn.Conv2d(ch, red, 1), nn.ReLU(inplace=True), nn.Conv2d(red, ch, 1))
        self.spatial = nn.Conv2d(2, 1, self.KERNEL, padding=self.KERNEL // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.sigmoid(self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.spatial(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class SeparableConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, dilation: int = 1, act: str = "relu"):
        super().__init__(ConvBNAct(cin, cin, 3, 1, dilation, groups=cin, act=act), ConvBNAct(cin, cout, 1, act=act))


class ImagePool(nn.Module):
    """Global average pool -> 1x1 conv (bias, no BN: batch statistics of a 1x1 map are unreliable)."""

    def __init__(self, cin: int, cout: int, act: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.act = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with separable dilated branches."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...], act: str):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(cin, cout, 1, act=act)] + [SeparableConv(cin, cout, r, act) for r in rates]
            + [ImagePool(cin, cout, act)])
        self.project = ConvBNAct(cout * (len(rates) + 2), cout, 1, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], 1))


class PyramidPool(nn.Module):
    """PSPNet pyramid pooling: pooled bins 1, 2, 3, 6 upsampled and concatenated with the input."""

    BINS = (1, 2, 3, 6)

    def __init__(self, cin: int, cout: int, act: str):
        super().__init__()
        mid = make_divisible(cin / 4)
        self.levels = nn.ModuleList(nn.Sequential(nn.Conv2d(cin, mid, 1), _act(act)) for _ in self.BINS)
        self.fuse = SeparableConv(cin + mid * len(self.BINS), cout, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        pooled = [F.interpolate(lv(F.adaptive_avg_pool2d(x, b)), (h, w), mode="bilinear", align_corners=False)
                  for b, lv in zip(self.BINS, self.levels)]
        return self.fuse(torch.cat([x, *pooled], 1))


class DetailPath(nn.Sequential):
    """BiSeNet spatial path: three stride-2 convolutions straight from the image to 1/8."""

    def __init__(self, width: int, act: str):
        half = make_divisible(width / 2)
        super().__init__(ConvBNAct(3, half, 3, 2, act=act), ConvBNAct(half, width, 3, 2, act=act),
                         ConvBNAct(width, width, 3, 2, act=act))


class DecoderStep(nn.Module):
    """Upsample to the skips' resolution, concatenate 1x1-projected skips, refine with separable convs, and
    optionally weigh the result with CBAM attention."""

    def __init__(self, cin: int, skip_chs: tuple[int, ...], skip_width: int, cout: int, depth: int, act: str,
                 attention: bool = False):
        super().__init__()
        self.projs = nn.ModuleList(ConvBNAct(c, skip_width, 1, act=act) for c in skip_chs)
        chs = [cin + skip_width * len(skip_chs)] + [cout] * depth
        layers = [SeparableConv(a, b, 1, act) for a, b in zip(chs[:-1], chs[1:])]
        self.refine = nn.Sequential(*layers, *([CBAM(cout)] if attention else []))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        if skips:
            x = F.interpolate(x, skips[0].shape[2:], mode="bilinear", align_corners=False)
        return self.refine(torch.cat([x, *(p(s) for p, s in zip(self.projs, skips))], 1))


class AuxHead(nn.Sequential):
    def __init__(self, cin: int, mid: int, num_classes: int, act: str):
        super().__init__(ConvBNAct(cin, mid, 3, act=act), nn.Conv2d(mid, num_classes, 1))


Part = tuple[type, tuple[tuple[str, Any], ...]]


def part(cls: type, **kwargs: Any) -> Part:
    return cls, tuple(sorted(kwargs.items()))


def build_part(p: Part) -> nn.Module:
    cls, kwargs = p
    return cls(**dict(kwargs))


@dataclass
class Layout:
    """Every part of a network with its constructor arguments, and where the decoder reads its skips."""

    stem: Part
    stages: list[list[Part]]
    context: Part
    decoder: list[Part]
    decoder_skips: list[list[str]]  # per decoder step: "s<i>" for stage i's output, "detail"
    head: Part
    detail: Part | None = None
    aux: Part | None = None
    aux_stage: int = -1

    def exported_parts(self) -> list[Part]:
        parts = [self.stem, *(p for s in self.stages for p in s), self.context, *self.decoder, self.head]
        return parts + ([self.detail] if self.detail else [])


def layout(cfg: ArchConfig, num_classes: int = NUM_CLASSES) -> Layout:
    act = cfg.activation
    stem = part(ConvBNAct, cin=3, cout=cfg.stem_width, kernel=3, stride=2, act=act)
    stages, cin = [], cfg.stem_width
    for st, (stride, dil) in zip(cfg.stages, cfg.strides()):
        blocks = []
        for i in range(st.depth):
            blocks.append(part(BLOCK_CLASSES[st.block], cin=cin, cout=st.width, stride=stride if i == 0 else 1,
                               dilation=dil, kernel=st.kernel, se=st.se, act=act,
                               expansion=st.expansion if st.block == "ir" else 1))
            cin = st.width
        stages.append(blocks)
    if cfg.context == "aspp":
        context = part(ASPP, cin=cin, cout=cfg.context_width, rates=cfg.context_rates, act=act)
    elif cfg.context == "ppm":
        context = part(PyramidPool, cin=cin, cout=cfg.context_width, act=act)
    else:
        context = part(ConvBNAct, cin=cin, cout=cfg.context_width, kernel=1, act=act)
    red = cfg.stage_reductions()
    widths = [s.width for s in cfg.stages]
    steps: list[list[str]] = []
    skip_chs: list[list[int]] = []
    s8, s4 = [], []
    if cfg.skip8:
        s8.append((f"s{red.index(8)}", widths[red.index(8)]))
    if cfg.detail_width:
        s8.append(("detail", cfg.detail_width))
    if cfg.skip4:
        s4.append((f"s{red.index(4)}", widths[red.index(4)]))
    for group in (s8, s4):
        if group:
            steps.append([n for n, _ in group])
            skip_chs.append([c for _, c in group])
    if not steps:
        steps, skip_chs = [[]], [[]]
    decoder, cin = [], cfg.context_width
    for chs in skip_chs:
        decoder.append(part(DecoderStep, cin=cin, skip_chs=tuple(chs), skip_width=cfg.skip_width,
                            cout=cfg.decoder_width, depth=cfg.decoder_depth, act=act, attention=cfg.decoder_cbam))
        cin = cfg.decoder_width
    if cfg.skip2:  # one light step at 1/2 on the stem's features: half the widths, one refinement
        fine = make_divisible(cfg.decoder_width / 2)
        decoder.append(part(DecoderStep, cin=cin, skip_chs=(cfg.stem_width,),
                            skip_width=make_divisible(cfg.skip_width / 2), cout=fine, depth=1, act=act,
                            attention=cfg.decoder_cbam))
        steps.append(["stem"])
        cin = fine
    head = part(nn.Conv2d, in_channels=cin, out_channels=num_classes, kernel_size=1)
    detail = part(DetailPath, width=cfg.detail_width, act=act) if cfg.detail_width else None
    aux_stage = len(cfg.stages) - 2
    aux = (part(AuxHead, cin=widths[aux_stage], mid=make_divisible(widths[aux_stage] / 2),
                num_classes=num_classes, act=act) if cfg.aux_head else None)
    return Layout(stem, stages, context, decoder, steps, head, detail, aux, aux_stage)


class FaceParser(nn.Module):
    """(B, 3, H, W) float image -> (B, num_classes, H, W) logits, any H, W. In training with an auxiliary
    head, returns (logits, aux_logits)."""

    def __init__(self, cfg: ArchConfig, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        lay = layout(cfg, num_classes)
        self.decoder_skips, self.aux_stage = lay.decoder_skips, lay.aux_stage
        self.stem = build_part(lay.stem)
        self.stages = nn.ModuleList(nn.Sequential(*map(build_part, blocks)) for blocks in lay.stages)
        self.detail = build_part(lay.detail) if lay.detail else None
        self.context = build_part(lay.context)
        self.decoder = nn.ModuleList(map(build_part, lay.decoder))
        self.head = build_part(lay.head)
        self.aux = build_part(lay.aux) if lay.aux else None

    def drop_aux(self) -> FaceParser:
        """The exported model has no auxiliary head."""
        self.aux = None
        return self

    def forward(self, x: torch.Tensor):
        h, w = x.shape[2:]
        # pad to a multiple of the nominal stride; always (a pad of 0 is a no-op), so that an ONNX export with a
        # variable height and width traces the padding instead of baking in the example's branch
        x = F.pad(x, (0, -w % NOMINAL_STRIDE, 0, -h % NOMINAL_STRIDE))
        feats = {}
        y = feats["stem"] = self.stem(x)  # (B, C, H/2, W/2)
        for i, stage in enumerate(self.stages):
            y = stage(y)
            feats[f"s{i}"] = y
        if self.detail is not None:
            feats["detail"] = self.detail(x)  # (B, Cd, H/8, W/8)
        y = self.context(y)  # (B, Cctx, H/os, W/os)
        for step, names in zip(self.decoder, self.decoder_skips):
            y = step(y, [feats[n] for n in names])
        y = self.head(y)  # (B, classes, H/2 .. H/os)
        y = F.interpolate(y, x.shape[2:], mode="bilinear", align_corners=False)[:, :, :h, :w]
        if self.aux is not None and self.training:
            a = F.interpolate(self.aux(feats[f"s{self.aux_stage}"]), x.shape[2:], mode="bilinear",
                              align_corners=False)[:, :, :h, :w]
            return y, a
        return y


def build_model(cfg: ArchConfig, num_classes: int = NUM_CLASSES) -> FaceParser:
    """The network for `cfg`; call `.drop_aux()` before export."""
    return FaceParser(cfg, num_classes)
