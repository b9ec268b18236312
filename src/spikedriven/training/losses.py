"""Losses of the official recipes (spec §5.3): label smoothing, soft targets (Mixup/CutMix), BCE, TET."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TETLoss", "build_train_criterion"]


class TETLoss(nn.Module):
    """Temporal Efficient Training (Deng et al. 2022), as the official ``criterion.TET_loss``:

        L = (1 - λ) · mean_t criterion(out[t], y) + λ · MSE(out, means)

    ``outputs``: per-step logits ``[T, B, K]``; ``criterion`` any classification loss (hard or soft targets).
    """

    def __init__(self, criterion: nn.Module, means: float = 1.0, lamb: float = 0.0):
        super().__init__()
        self.criterion, self.means, self.lamb = criterion, float(means), float(lamb)

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 3:
            raise ValueError(f"TET loss needs per-step logits [T, B, K] (a model built with tet=True), got shape "
                             f"{tuple(outputs.shape)}")
        T = outputs.shape[0]
        loss = sum(self.criterion(outputs[t], target) for t in range(T)) / T
        if self.lamb != 0:
            mse = torch.nn.functional.mse_loss(outputs, torch.full_like(outputs, self.means))
            return (1 - self.lamb) * loss + self.lamb * mse
        return (1 - self.lamb) * loss


def build_train_criterion(r, mixup_active: bool) -> nn.Module:
    """The official choice: SoftTargetCE (or BCE) when mixup/cutmix is active, else LabelSmoothingCE / CE;
    wrapped in :class:`TETLoss` when ``TET`` is on."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixup_active:
        if r.get("bce_loss"):
            base = BinaryCrossEntropy(target_threshold=r.get("bce_target_thresh"))
        else:
            base = SoftTargetCrossEntropy()
    elif r.get("smoothing"):
        if r.get("bce_loss"):
            base = BinaryCrossEntropy(smoothing=r["smoothing"], target_threshold=r.get("bce_target_thresh"))
        else:
            base = LabelSmoothingCrossEntropy(smoothing=r["smoothing"])
    else:
        base = nn.CrossEntropyLoss()
    if r.get("TET"):
        return TETLoss(base, r.get("TET_means", 1.0), r.get("TET_lamb", 0.0))
    return base
