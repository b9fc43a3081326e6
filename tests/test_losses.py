from __future__ import annotations

import numpy as np
import torch

from space.config import LossConfig
from train.losses import SegLoss, boundary_mask, class_weights, lovasz_softmax


def test_every_term_is_finite_and_trains():
    torch.manual_seed(0)
    target = torch.randint(0, 19, (2, 16, 16))
    logits = torch.randn(2, 19, 16, 16, requires_grad=True)
    cfg = LossConfig(ce=1, dice=0.5, focal=0.5, lovasz=0.5, boundary=0.5, label_smoothing=0.1)
    loss_fn = SegLoss(cfg, class_weights(np.arange(1, 20) * 100, 0.5))
    loss = loss_fn(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and set(loss_fn.terms) == {"ce", "dice", "focal", "lovasz", "boundary"}
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_perfect_prediction_has_low_loss():
    target = torch.randint(0, 19, (1, 16, 16))
    perfect = torch.nn.functional.one_hot(target, 19).permute(0, 3, 1, 2).float() * 50
    loss_fn = SegLoss(LossConfig(ce=1, dice=1, lovasz=1))
    assert loss_fn(perfect, target) < 1e-3
    assert loss_fn(-perfect, target) > 1.0
    assert lovasz_softmax(perfect.softmax(1), target) < 1e-3


def test_boundary_and_class_weights():
    t = torch.zeros(1, 8, 8, dtype=torch.long)
    t[:, :, 4:] = 1
    edge = boundary_mask(t)
    assert edge[0, :, 3:5].all() and not edge[0, :, :3].any()
    w = class_weights(np.array([1000, 10] + [0] * 17), 0.5)
    assert w[1] > w[0] and abs(w[:2].mean() - 1) < 1e-6
    assert class_weights(np.ones(19), 0.0) is None


def _lovasz_per_class(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The textbook form (Berman et al.): one sort per class present; the reference for the batched one."""
    c = probs.shape[1]
    p, t = probs.permute(0, 2, 3, 1).reshape(-1, c), target.reshape(-1)
    losses = []
    for k in torch.unique(t).tolist():
        fg = (t == k).float()
        errors_sorted, perm = torch.sort((fg - p[:, k]).abs(), descending=True)
        gt_sorted = fg[perm]
        gts = gt_sorted.sum()
        jaccard = 1 - (gts - gt_sorted.cumsum(0)) / (gts + (1 - gt_sorted).cumsum(0))
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        losses.append(torch.dot(errors_sorted, jaccard))
    return torch.stack(losses).mean()


def test_batched_lovasz_equals_the_per_class_form_value_and_gradient():
    torch.manual_seed(1)
    target = torch.randint(0, 7, (2, 12, 12))  # only 7 of 19 classes present: absent ones must not count
    logits = torch.randn(2, 19, 12, 12, requires_grad=True)
    ours = lovasz_softmax(logits.softmax(1), target)
    (g1,) = torch.autograd.grad(ours, logits)
    ref = _lovasz_per_class(logits.softmax(1), target)
    (g2,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, atol=1e-6) and torch.allclose(g1, g2, atol=1e-6)
