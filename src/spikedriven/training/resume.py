"""Checkpoint state of a training run: RNG state, restoring a trainer (exact resume of our checkpoints, weights and
epoch of foreign ones), partial-load reports and label checks."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint, load_state_into_model, read_checkpoint_file

__all__ = ["rng_state", "set_rng_state", "restore", "partial_line", "check_labels"]


def rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.random.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": st[0], "key": torch.from_numpy(st[1].astype(np.int64)), "pos": int(st[2]),
                      "has_gauss": int(st[3]), "cached_gaussian": float(st[4])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    torch.random.set_rng_state(s["torch"])
    py = s["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def restore(trainer, path: Path) -> None:
    """Continue ``trainer`` from checkpoint ``path`` (see ``Trainer.load_state``)."""
    ck = read_checkpoint_file(path)
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: not a training checkpoint (it holds a {type(ck).__name__})")
    partial = bool(trainer.r.get("partial"))
    if "next_epoch" not in ck:  # an official / foreign checkpoint: weights (+ optimizer) and epoch only
        sd, _ = load_checkpoint(path)
        info = load_state_into_model(trainer.model, sd, strict=not partial, source=str(path))
        if not trainer.r.get("no_resume_opt") and "optimizer" in ck and not partial:
            _load_part("optimizer", lambda: trainer.optimizer.load_state_dict(ck["optimizer"]), path)
        try:
            trainer.epoch = int(ck.get("epoch", -1)) + 1
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: its 'epoch' entry {ck.get('epoch')!r} is not a number") from None
        if trainer.scheduler is not None:
            trainer.scheduler.step(trainer.epoch)
        what = "all weights" if not (info["missing"] or info["unexpected"]) else partial_line(path, info)
        trainer.log(f"resumed from {path} (foreign checkpoint: {what}), starting at epoch {trainer.epoch}")
        return
    need = ("state_dict", "optimizer", "next_epoch", "next_batch", "global_step", "train_loss_sum",
            "train_loss_n", "rng")
    lacking = [k for k in need if k not in ck]
    if lacking:
        raise CheckpointError(f"{path}: a damaged training checkpoint (no {', '.join(lacking)} entry)")
    sd = ck["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: its state_dict is not a mapping of names to tensors")
    load_state_into_model(trainer.model, sd, strict=True, source=str(path))
    if trainer.r.get("no_resume_opt"):
        trainer.epoch = int(ck["next_epoch"]) + (1 if ck["next_batch"] else 0)
        trainer.log(f"loaded weights only from {path}; starting at epoch {trainer.epoch}")
        return
    _load_part("optimizer", lambda: trainer.optimizer.load_state_dict(ck["optimizer"]), path)
    if trainer.scheduler is not None and ck.get("scheduler") is not None:
        _load_part("scheduler", lambda: trainer.scheduler.load_state_dict(ck["scheduler"]), path)
    if trainer.scaler is not None and ck.get("scaler") is not None:
        _load_part("scaler", lambda: trainer.scaler.load_state_dict(ck["scaler"]), path)
    if trainer.ema is not None and ck.get("state_dict_ema") is not None:
        load_state_into_model(trainer.ema.module, ck["state_dict_ema"], strict=True, source=f"{path} (EMA)")
    try:
        trainer.epoch, trainer.batch_in_epoch = int(ck["next_epoch"]), int(ck["next_batch"])
        trainer.global_step = int(ck["global_step"])
        trainer.loss_sum, trainer.loss_n = float(ck["train_loss_sum"]), int(ck["train_loss_n"])
        trainer.best_metric, trainer.best_epoch = ck.get("best_metric"), int(ck.get("best_epoch", -1))
        trainer.history = list(ck.get("history", []))
        trainer.elapsed_before = float(ck.get("elapsed_s", 0.0))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a damaged training checkpoint ({e})") from None
    if int(ck.get("world_size", 1)) == trainer.env.world:
        _load_part("random-generator state", lambda: set_rng_state(ck["rng"]), path)
    else:
        trainer._warn(f"resuming with {trainer.env.world} process(es) from a {ck.get('world_size')}-process run: "
                   f"training continues, but not bit-identically")
    trainer.log(f"resumed {path}: epoch {trainer.epoch}, batch {trainer.batch_in_epoch}, step {trainer.global_step}")

def _load_part(what: str, fn, path) -> None:
    try:
        fn()
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"{path}: its {what} does not fit this run ({' '.join(str(e).split())[:200]}); "
                              f"--no-resume-opt loads the weights only") from None


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """Integer class labels in 0..num_classes-1 (soft targets pass); one message instead of an IndexError deep
    in the loss."""
    if y.ndim != 1 or y.is_floating_point() or not y.numel():
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        from ..data.static import DatasetError

        bad = lo if lo < 0 else hi
        raise DatasetError(f"label {bad} is outside 0..{num_classes - 1}: the data has more classes than the model "
                           f"(num_classes={num_classes}); set num_classes to the dataset's, or check the labels")


def partial_line(path, info: dict) -> str:
    miss, unexp = info["missing"], info["unexpected"]
    part = [f"partial load of {path}: {len(miss)} model key(s) NOT loaded (left as initialised)"
            + (f": {', '.join(miss[:12])}{' ...' if len(miss) > 12 else ''}" if miss else "")]
    if unexp:
        part.append(f"{len(unexp)} file key(s) unused: {', '.join(unexp[:12])}{' ...' if len(unexp) > 12 else ''}")
    return "; ".join(part)
