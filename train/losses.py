"""Segmentation losses combined by a `LossConfig`: cross-entropy (class weights, label smoothing), soft dice,
focal, Lovász-softmax and a boundary-weighted cross-entropy."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from space.config import LossConfig
from train.classes import NUM_CLASSES


def class_weights(pixel_counts: np.ndarray, power: float) -> torch.Tensor | None:
    """(1 / frequency) ** power, normalised to mean 1 over the classes seen; None when power is 0."""
    if power <= 0:
        return None
    freq = pixel_counts / max(1, pixel_counts.sum())
    w = np.where(freq > 0, (1.0 / np.maximum(freq, 1e-12)) ** power, 0.0)
    seen = freq > 0
    w[seen] /= w[seen].mean()
    w[~seen] = 1.0
    return torch.tensor(w, dtype=torch.float32)


def dice_loss(probs: torch.Tensor, onehot: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft dice over the classes present in the batch's targets."""
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    present = (onehot.sum(dims) > 0).float()  # masked mean without a host sync
    return 1 - (dice * present).sum() / present.sum().clamp(min=1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    logp = F.log_softmax(logits, 1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


def lovasz_softmax(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax over the whole batch (Berman et al., 2018), averaged over the classes present in the
    targets. All classes in one batched sort; absent ones are masked out, so no step waits for the host."""
    c = probs.shape[1]
    p = probs.permute(0, 2, 3, 1).reshape(-1, c)  # (P, C)
    fg = F.one_hot(target.reshape(-1), c).to(p.dtype)  # (P, C)
    errors_sorted, perm = torch.sort((fg - p).abs(), dim=0, descending=True)
    fg_sorted = fg.gather(0, perm)
    gts = fg_sorted.sum(0)
    jaccard = 1 - (gts - fg_sorted.cumsum(0)) / (gts + (1 - fg_sorted).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])  # the Lovász extension's gradient, per class
    present = (gts > 0).to(p.dtype)
    return ((errors_sorted * grad).sum(0) * present).sum() / present.sum().clamp(min=1)


def boundary_mask(target: torch.Tensor, width: int = 1) -> torch.Tensor:
    """True where a pixel's 3x3 (or wider) neighbourhood holds another label."""
    t = target[:, None].float()
    k = 2 * width + 1
    hi = F.max_pool2d(t, k, 1, width)
    lo = -F.max_pool2d(-t, k, 1, width)
    return (hi != lo)[:, 0]


class SegLoss(nn.Module):
    """Weighted sum of the configured terms; `terms` of the last call are kept for logging."""

    def __init__(self, cfg: LossConfig, weights: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("weights", weights if weights is not None else torch.ones(NUM_CLASSES))
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        logits = logits.float()
        ce_pix = F.cross_entropy(logits, target, weight=self.weights, label_smoothing=cfg.label_smoothing,
                                 reduction="none")
        terms = {"ce": ce_pix.mean()}
        if cfg.dice or cfg.lovasz:
            probs = logits.softmax(1)
            if cfg.dice:
                onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
                terms["dice"] = dice_loss(probs, onehot)
            if cfg.lovasz:
                terms["lovasz"] = lovasz_softmax(probs, target)
        if cfg.focal:
            terms["focal"] = focal_loss(logits, target, cfg.focal_gamma)
        if cfg.boundary:
            edge = boundary_mask(target).float()
            terms["boundary"] = (ce_pix * edge).sum() / edge.sum().clamp(min=1)
        total = sum(getattr(cfg, name) * value for name, value in terms.items())
        self.terms = {k: v.detach() for k, v in terms.items()}  # tensors: reading them would sync the device
        return total
