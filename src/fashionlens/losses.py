"""Multi-label losses that skip unknown labels (``mask == 0``).

Every loss here takes ``(logits, targets, mask)`` of shape ``(B, C)``: ``targets`` 1/0, ``mask`` 1
where the label is known. ``mask=None`` means all known.
"""

from __future__ import annotations

import torch
from timm.loss import AsymmetricLossMultiLabel
from torch import nn
from torch.nn import functional as F


def _mask_like(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(logits)
    if mask.shape != logits.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from logits shape {tuple(logits.shape)}")
    return mask.to(logits.dtype)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # An all-unknown batch gives 0 (with a gradient graph), not NaN.
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor,
                           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy averaged over the known entries.

    With every entry known this equals ``nn.MultiLabelSoftMarginLoss`` (ML-GCN's loss), which
    averages over labels and then over the batch.
    """
    mask = _mask_like(logits, mask)
    losses = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return _masked_mean(losses, mask)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021, Eq. 1-4), with unknown labels masked out.

    With ``p = sigmoid(logit)``: a positive costs ``-(1 - p)^gamma_pos * log(p)``; a negative costs
    ``-p_m^gamma_neg * log(1 - p_m)`` with the shifted probability ``p_m = max(p - clip, 0)``
    (Eq. 3), which discards easy negatives entirely. Each entry's cost is timm's
    ``AsymmetricLossMultiLabel(reduction="none")``; timm has no mask, so the reduction is ours:
    ``"mean"`` averages over known entries (the scale of :func:`masked_bce_with_logits`), ``"sum"``
    sums them, as the ASL reference does (its learning rates assume that scale).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.per_entry = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps,
                                                  reduction="none")
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = _mask_like(logits, mask)
        losses = self.per_entry(logits, targets).to(logits.dtype)
        if self.reduction == "sum":
            return (losses * mask).sum()
        return _masked_mean(losses, mask)


def weighted_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None,
                             pos_weight: torch.Tensor, neg_weight: torch.Tensor) -> torch.Tensor:
    """Per-attribute weighted BCE: ``-(w_pos * y * log p + w_neg * (1 - y) * log(1 - p))``.

    ``pos_weight`` and ``neg_weight`` are ``(C,)``; the result is averaged over known entries.
    See :func:`attribute_loss_weights` for defaults.
    """
    mask = _mask_like(logits, mask)
    targets = targets.to(logits.dtype)
    # log(1 - sigmoid(x)) = logsigmoid(-x): stable for large logits.
    losses = -(pos_weight * targets * F.logsigmoid(logits) + neg_weight * (1 - targets) * F.logsigmoid(-logits))
    return _masked_mean(losses, mask)


def attribute_loss_weights(labels: torch.Tensor, mask: torch.Tensor | None = None,
                           min_fraction: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced weights from training label frequencies, for :func:`weighted_bce_with_logits`.

    With ``f`` the fraction of known entries of an attribute that are positive (clamped to
    ``[min_fraction, 1 - min_fraction]``): ``w_pos = 1 / (2 f)``, ``w_neg = 1 / (2 (1 - f))``.
    Positives and negatives of each attribute then carry equal total weight, and the mean weight
    over the known entries is exactly 1, so the loss keeps the scale of plain BCE. The clamp caps
    the weight of a rare attribute at ``1 / (2 min_fraction)`` (50 by default); an attribute with no
    known entry gets ``f = 0.5`` (weights 1, 1).
    """
    labels = labels.to(torch.float64)
    mask = torch.ones_like(labels) if mask is None else mask.to(torch.float64)
    known = mask.sum(dim=0)
    positives = (labels * mask).sum(dim=0)
    fraction = torch.where(known > 0, positives / known.clamp(min=1.0), torch.full_like(known, 0.5))
    fraction = fraction.clamp(min_fraction, 1.0 - min_fraction)
    return (1.0 / (2.0 * fraction)).float(), (1.0 / (2.0 * (1.0 - fraction))).float()


def single_label_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy for single-label data (class folders): the target is each row's one
    positive label; a row without exactly one known positive is left out (0 when none is left)."""
    mask = _mask_like(logits, mask)
    positives = (targets > 0.5) & (mask > 0)
    usable = positives.sum(dim=1) == 1
    if not bool(usable.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[usable], positives[usable].float().argmax(dim=1))
