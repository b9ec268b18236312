"""Losses of the official recipes (spec §5.3): label smoothing, soft targets (Mixup/CutMix), BCE, TET."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TETLoss", "DistillationLoss", "build_train_criterion", "build_teacher"]


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


class DistillationLoss(nn.Module):
    """DeiT-style distillation (as the official V2 fine-tuning, ``util/kd_loss.py``) for a model with two heads:

        L = (1 - alpha) * base(head, y) + alpha * KD(head_kd, teacher)
        hard: KD = CE(head_kd, argmax teacher)        soft: KD = KL(log_softmax(head_kd / tau) || log_softmax(teacher
        / tau)) * tau^2 / numel(head_kd) * batch   (the DeiT formula, per-element sum over the batch)

    ``outputs``: the model's ``(head, head_kd)`` (a kd model in training mode); ``teacher_outputs``: the frozen
    teacher's logits for the same input.
    """

    def __init__(self, base: nn.Module, kind: str = "hard", alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if kind not in ("hard", "soft"):
            raise ValueError(f"distillation_type must be 'hard' or 'soft', got {kind!r}")
        self.base, self.kind, self.alpha, self.tau = base, kind, float(alpha), float(tau)

    def forward(self, outputs, target: torch.Tensor, teacher_outputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
            raise ValueError("distillation needs a model with a distillation head (kd=True), which returns "
                             "(head, head_kd) in training mode")
        out, out_kd = outputs
        base = self.base(out, target)
        if self.kind == "hard":
            kd = F.cross_entropy(out_kd, teacher_outputs.argmax(dim=1))
        else:
            t = self.tau
            kd = F.kl_div(F.log_softmax(out_kd / t, dim=1), F.log_softmax(teacher_outputs / t, dim=1),
                          reduction="sum", log_target=True) * (t * t) / out_kd.numel()
        return (1 - self.alpha) * base + self.alpha * kd


def build_teacher(r, num_classes: int, device) -> nn.Module:
    """The frozen distillation teacher: ``kd_teacher`` (a timm model name) built without downloading anything and
    loaded from ``kd_teacher_checkpoint`` (read safely, strictly), in eval mode with gradients off."""
    import timm

    from ..checkpoint import load_checkpoint, load_state_into_model

    name, path = r.get("kd_teacher"), r.get("kd_teacher_checkpoint")
    if not name or not path:
        raise ValueError("distillation_type is set: give the teacher with --kd-teacher NAME (a timm model) and "
                         "--kd-teacher-checkpoint FILE (its weights; nothing is downloaded)")
    teacher = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=int(r["in_channels"]))
    sd, _ = load_checkpoint(path)
    missing, unexpected = set(teacher.state_dict()) - set(sd), set(sd) - set(teacher.state_dict())
    if missing or unexpected:
        raise ValueError(f"{path} does not hold the weights of timm model {name!r} with {num_classes} classes "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    # the same checks as the student's weights: kinds, NaN/inf (float8 too), BatchNorm variances
    load_state_into_model(teacher, sd, strict=True, source=f"{path} (distillation teacher)")
    teacher.requires_grad_(False)
    return teacher.eval().to(device)


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
        base = TETLoss(base, r.get("TET_means", 1.0), r.get("TET_lamb", 0.0))
    if (r.get("distillation_type") or "none") != "none":
        return DistillationLoss(base, r["distillation_type"], r.get("distillation_alpha", 0.5),
                                r.get("distillation_tau", 1.0))
    return base
