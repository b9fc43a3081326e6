"""Paired (image, mask) training augmentation, defined once (`AugRanges`) and applied two ways:

- `train_pipeline`: albumentations, per image on the CPU (DataLoader workers); the CPU training path.
- `DeviceAugment`: short batched torch code with per-sample random parameters, on the device where the cached
  training set lives (CUDA), so that no image crosses the host link during training. One `affine_grid` drives
  both the bilinear image sample and the nearest mask sample, so image and mask cannot drift apart.

The horizontal flip swaps the subject's left/right classes (4<->5, 6<->7, 8<->9) exactly when it flips.
Masks are always resampled nearest-neighbour. No lambdas, so pipelines pickle into DataLoader workers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from train.classes import FLIP_LUT


@dataclass(frozen=True)
class AugRanges:
    """Probabilities and half-ranges of the training augmentation; `at(strength)` scales every range."""

    flip_p: float = 0.5
    affine_p: float = 0.8
    scale: float = 0.25  # zoom factor in [1 - scale, 1 + scale]
    rotate: float = 20.0  # degrees
    translate: float = 0.08  # fraction of the side
    colour_p: float = 0.8
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03  # fraction of a turn

    @classmethod
    def at(cls, strength: float) -> AugRanges:
        """`strength` in [0, 1] scales the geometry and colour ranges; 0 leaves only the flip."""
        s = float(strength)
        return cls(scale=0.25 * s, rotate=20 * s, translate=0.08 * s, brightness=0.3 * s, contrast=0.3 * s,
                   saturation=0.3 * s, hue=0.03 * s, affine_p=0.8 if s > 0 else 0.0,
                   colour_p=0.8 if s > 0 else 0.0)


class LabelSwapHorizontalFlip(A.HorizontalFlip):
    """Horizontal flip that also swaps left/right face-part labels in the mask."""

    def apply_to_mask(self, mask: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        return FLIP_LUT[np.ascontiguousarray(mask[:, ::-1])]


class OrderedColorJitter(A.ColorJitter):
    """ColorJitter in one fixed order, brightness, contrast, saturation, hue, as `DeviceAugment._colour` applies
    them (albumentations shuffles the order per image), so that both paths draw from one distribution."""

    def get_params(self) -> dict[str, Any]:
        return {**super().get_params(), "order": [0, 1, 2, 3]}


def train_pipeline(size: int, strength: float = 1.0, seed: int | None = None) -> A.Compose:
    """Flip with label swap, scale/rotate/shift (one zoom for x and y, as on the device), colour jitter at
    `AugRanges.at(strength)`, then a resize."""
    r = AugRanges.at(strength)
    transforms = [LabelSwapHorizontalFlip(p=r.flip_p)]
    if r.affine_p:
        transforms += [
            A.Affine(scale=(1 - r.scale, 1 + r.scale), rotate=(-r.rotate, r.rotate),
                     translate_percent=(-r.translate, r.translate), keep_ratio=True, interpolation=cv2.INTER_LINEAR,
                     mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                     fill=0, fill_mask=0, p=r.affine_p),
            OrderedColorJitter(brightness=r.brightness, contrast=r.contrast, saturation=r.saturation, hue=r.hue,
                               p=r.colour_p),
        ]
    transforms.append(A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    return A.Compose(transforms, seed=seed)


def eval_pipeline(size: int) -> A.Compose:
    """Resize only (masks nearest)."""
    return A.Compose([A.Resize(size, size, interpolation=cv2.INTER_AREA, mask_interpolation=cv2.INTER_NEAREST)])


_GREY = (0.299, 0.587, 0.114)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class DeviceAugment:
    """`AugRanges` on a batch where it lives: uint8 (B, H, W, 3) images and uint8 (B, H, W) masks in, float
    (B, 3, H, W) images in [0, 1] and uint8 masks out. Every sample draws its own flip, affine and colour
    parameters from a seeded generator on the batch's device."""

    def __init__(self, ranges: AugRanges, seed: int, device: torch.device):
        self.r, self.device = ranges, torch.device(device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.lut = torch.as_tensor(FLIP_LUT, device=self.device)
        self.yiq = _YIQ.to(self.device)
        self.rgb = torch.linalg.inv(_YIQ).to(self.device)
        self.grey = torch.tensor(_GREY, device=self.device)[None, :, None, None]  # built once, not per batch

    def _uniform(self, n: int, half: float) -> torch.Tensor:
        return (torch.rand(n, generator=self.gen, device=self.device) * 2 - 1) * half

    def _chance(self, n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=self.gen, device=self.device) < p

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, n = self.r, images.shape[0]
        x = images.permute(0, 3, 1, 2).float().div_(255)  # (B, 3, H, W)
        y = masks
        flip = self._chance(n, r.flip_p)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        y = torch.where(flip[:, None, None], self.lut[y.long()].flip(2), y)
        if r.affine_p:
            x, y = self._affine(x, y, self._chance(n, r.affine_p))
        if r.colour_p:
            x = self._colour(x, self._chance(n, r.colour_p))
        return x, y

    def _affine(self, x: torch.Tensor, y: torch.Tensor, on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zoom s, rotation a and shift t about the centre: output p_out = s R(a) p_in + t, so each output pixel
        samples the input at R(-a) (p_out - t) / s (normalised coordinates, as affine_grid wants)."""
        n, _, h, w = x.shape
        zero = torch.zeros(n, device=self.device)
        scale = torch.where(on, 1 + self._uniform(n, self.r.scale), zero + 1)
        angle = torch.where(on, self._uniform(n, self.r.rotate) * math.pi / 180, zero)
        tx = torch.where(on, self._uniform(n, 2 * self.r.translate), zero)  # normalised coordinates span 2
        ty = torch.where(on, self._uniform(n, 2 * self.r.translate), zero)
        c, s = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([c, s, -(c * tx + s * ty)], 1),
                             torch.stack([-s, c, -(-s * tx + c * ty)], 1)], 1)  # (B, 2, 3)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return x, y[:, 0].to(torch.uint8)  # outside the image: background (0), as fill_mask=0 on the CPU

    def _colour(self, x: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation and hue factors per sample (identity where `on` is False)."""
        n, r = x.shape[0], self.r

        def factor(half: float) -> torch.Tensor:
            return torch.where(on, 1 + self._uniform(n, half), torch.ones(n, device=self.device))[:, None, None, None]

        grey_w = self.grey
        x = (x * factor(r.brightness)).clamp_(0, 1)
        mean = (x * grey_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
        x = ((x - mean) * factor(r.contrast) + mean).clamp_(0, 1)
        grey = (x * grey_w).sum(1, keepdim=True)
        x = ((x - grey) * factor(r.saturation) + grey).clamp_(0, 1)
        turn = torch.where(on, self._uniform(n, r.hue), torch.zeros(n, device=self.device)) * 2 * math.pi
        cos, sin = torch.cos(turn), torch.sin(turn)
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
                           torch.stack([zero, sin, cos], 1)], 1)  # (B, 3, 3) rotation of (I, Q)
        mix = self.rgb @ rot @ self.yiq  # RGB -> YIQ -> rotate -> RGB, per sample
        return torch.einsum("bij,bjhw->bihw", mix, x).clamp_(0, 1)
