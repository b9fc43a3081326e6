"""Frozen configs: the architecture (`ArchConfig`), the loss (`LossConfig`) and the recipe (`TrainConfig`).

A network is built from an `ArchConfig` alone, and the config dict travels in every checkpoint, so a model can
always be rebuilt from what was saved.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

BUDGET = 1_821_085  # a model must have strictly fewer trainable parameters than this
NUM_CLASSES = 19  # background + 18 face parts (train.classes names them)
BLOCKS = ("res", "ir", "ds")  # plain residual, inverted residual, depthwise-separable
CONTEXTS = ("aspp", "ppm", "none")
ACTIVATIONS = ("relu", "hardswish", "silu")


@dataclass(frozen=True)
class StageConfig:
    """One encoder stage: `depth` blocks of one type; the first block may downsample."""

    width: int
    depth: int
    block: str = "ir"
    expansion: int = 4  # inverted residual only
    kernel: int = 3
    se: bool = False

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"block={self.block!r}; expected one of {BLOCKS}")
        if self.kernel not in (3, 5) or self.depth < 1 or self.width < 1:
            raise ValueError(f"bad stage {self}: kernel must be 3 or 5, depth and width >= 1")


@dataclass(frozen=True)
class ArchConfig:
    """The whole network. Stages run at strides 4, 8, 16, 32 (a fifth stage adds stride 2 first); stages
    past `output_stride` keep their resolution and use `dilations` instead (one rate per such stage)."""

    stem_width: int = 24
    stages: tuple[StageConfig, ...] = ()
    output_stride: int = 16
    dilations: tuple[int, ...] = (2,)
    context: str = "aspp"
    context_width: int = 128
    context_rates: tuple[int, ...] = (2, 4, 6)
    skip4: bool = True
    skip8: bool = False
    skip2: bool = False  # a last, light decoder step at 1/2 from the stem (fine detail: brows, eyes, lips)
    skip_width: int = 32
    detail_width: int = 0  # BiSeNet-style detail path to 1/8 (0 = none)
    decoder_width: int = 64
    decoder_depth: int = 1
    decoder_cbam: bool = False  # CBAM attention (channel, then spatial) after each decoder step
    activation: str = "relu"
    aux_head: bool = False  # training only; dropped at export

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(
            s if isinstance(s, StageConfig) else StageConfig(**s) for s in self.stages))
        object.__setattr__(self, "dilations", tuple(self.dilations))
        object.__setattr__(self, "context_rates", tuple(self.context_rates))
        if len(self.stages) not in (4, 5):
            raise ValueError(f"{len(self.stages)} stages; expected 4 or 5")
        if self.output_stride not in (8, 16):
            raise ValueError(f"output_stride={self.output_stride}; expected 8 or 16")
        n_dilated = 1 if self.output_stride == 16 else 2
        if len(self.dilations) != n_dilated:
            raise ValueError(f"output_stride {self.output_stride} needs {n_dilated} dilation rate(s), "
                             f"got {self.dilations}")
        if self.context not in CONTEXTS:
            raise ValueError(f"context={self.context!r}; expected one of {CONTEXTS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r}; expected one of {ACTIVATIONS}")

    def strides(self) -> list[tuple[int, int]]:
        """(stride, dilation) of each stage's first block."""
        nominal = [2] * 4 if len(self.stages) == 4 else [1] + [2] * 4
        out, total, dil = [], 2, iter(self.dilations)
        for s in nominal:
            if total * s > self.output_stride:
                out.append((1, next(dil)))
            else:
                total *= s
                out.append((s, 1))
        return out

    def stage_reductions(self) -> list[int]:
        """Output stride (relative to the input) after each stage."""
        red, total = [], 2
        for s, _ in self.strides():
            total *= s
            red.append(total)
        return red

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def normalised(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A saved config dict with the fields added since filled in with their defaults (what the network was
        built with), so that checkpoints of older code compare equal to the same network's config today."""
        try:
            return cls.from_dict(d).to_dict()
        except (TypeError, ValueError):
            return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ArchConfig keys {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms (0 = off) and the class weighting."""

    ce: float = 1.0
    dice: float = 0.5
    focal: float = 0.0
    focal_gamma: float = 2.0
    lovasz: float = 0.0
    boundary: float = 0.0
    class_weight_power: float = 0.0  # weights = (1 / pixel frequency) ** power, normalised; 0 = uniform
    label_smoothing: float = 0.0
    aux_weight: float = 0.4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossConfig:
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule; the epoch count and resolution are set by the caller (proxy or full)."""

    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_frac: float = 0.05
    batch_size: int = 16
    aug_strength: float = 0.7  # fixed, not searched (see space.sample.sample_train)
    grad_clip: float = 5.0
    ema: float = 0.0  # EMA decay of weights for evaluation/export; 0 = off
    rfs_threshold: float = 0.0  # repeat-factor sampling (train.loop.repeat_factors); 0 = off, every image once

    def __post_init__(self):
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r}; expected 'adamw' or 'sgd'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)

    @classmethod
    def normalised(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A saved dict with the settings added since (rfs_threshold) at their defaults, what the run trained with."""
        try:
            return cls.from_dict(d).to_dict()
        except (TypeError, ValueError):
            return d
