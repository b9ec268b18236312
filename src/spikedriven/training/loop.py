"""The Trainer: model, optimizer, schedule, AMP, EMA, clipping, evaluation, checkpoints and exact resume.

Mechanics follow the official train.py (spec §5.3) unless a difference is documented in docs/training.md:
timm ``create_optimizer_v2`` (no weight decay on biases / 1-D parameters), timm schedulers stepped once per
epoch with ``step(epoch + 1)`` (optionally every update), Mixup/CutMix with smoothing folded into the targets,
``ModelEmaV2``, native AMP, top-1/top-5 on the held-out split every epoch, metrics reduced across ranks.
"""
from __future__ import annotations

import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import atomic_save, load_checkpoint, load_state_into_model, save_safetensors
from ..models.factory import build_model as _build_model
from .data import _sample_seed, apply_mixup, batch_cutout, build_datasets, build_loaders, build_mixup
from .distributed import DistEnv, all_reduce_sum, barrier, broadcast_object, init_distributed
from .losses import build_teacher, build_train_criterion
from .precision import cpu_has_native_bf16 as _cpu_has_native_bf16  # tests patch this name
from .recipe import Recipe
from .resume import check_labels as _check_labels
from .resume import partial_line as _partial_line
from .resume import restore, rng_state, set_rng_state
from .report import RunLogger, energy_summary, open_run_dir, plot_curve, resume_source, write_text_atomic

__all__ = ["Trainer", "evaluate", "build_model", "rng_state", "set_rng_state", "unwrap"]

CKPT_VERSION = 3


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def build_model(r: Recipe):
    """The recipe's model (``models.build_model(recipe=r)``) and its constructor arguments."""
    model = _build_model(recipe=r)[0]
    return model, dict(model.model_kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, device, env: DistEnv | None = None, amp_ctx: Callable | None = None,
             progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 (%) over ``loader``; sums are reduced across ranks (exact)."""
    env = env or DistEnv()
    was = model.training
    model.eval()
    loss_sum = c1 = c5 = n = 0.0
    it = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    try:
        for x, y_host in it:
            x, y = x.to(device, non_blocking=True).float(), y_host.to(device, non_blocking=True)
            with (amp_ctx() if amp_ctx else nullcontext()):
                out = model(x)
            out = out.float()
            if out.ndim == 3:  # TET model: per-step logits -> mean over T
                out = out.mean(0)
            _check_labels(y_host, out.shape[1])
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            k = min(5, out.shape[1])
            top = out.topk(k, dim=1).indices
            hit = top.eq(y[:, None])
            c1 += float(hit[:, 0].sum())
            c5 += float(hit.any(1).sum())
            n += y.numel()
    finally:
        model.train(was)
    loss_sum, c1, c5, n = all_reduce_sum([loss_sum, c1, c5, n], env)
    if n == 0:
        raise ValueError("the evaluation set is empty: no sample to evaluate (check the dataset files and "
                         "max_eval_samples)")
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "n": int(n)}


# ------------------------------------------------------------------------------------------- trainer
class StopPolicy:
    """When training stops before the schedule ends: after ``stop_after_steps`` steps (e.g. to test resume) or
    when ``time_limit`` minutes of training have passed (all ranks stop at the same step)."""

    def __init__(self, r: Recipe, env: DistEnv):
        self.env = env
        self.stop_at = int(r["stop_after_steps"]) if r.get("stop_after_steps") is not None else None
        self.limit_s = 60 * float(r["time_limit"]) if r.get("time_limit") is not None else None

    def over_time(self, elapsed: float) -> bool:
        return self.limit_s is not None and elapsed > self.limit_s

    def after_step(self, step: int, elapsed: float) -> str | None:
        if self.stop_at is not None and step >= self.stop_at:
            return "steps"
        if self.limit_s is not None:
            hit = self.over_time(elapsed)
            if self.env.world > 1:  # clocks differ across ranks: all must stop at the same step
                hit = all_reduce_sum([float(hit)], self.env)[0] > 0
            if hit:
                return "time"
        return None


class Trainer:
    """Train recipe ``r``: ``Trainer(r).fit()`` returns the final metrics and the run folder.

    ``datasets`` may be given (``{"train": ..., "test": ...}`` of (tensor, label) or SeededDataset) to bypass
    ``spikedriven.data``; ``print_fn`` receives the human-readable log lines (rank 0 only).
    """

    def __init__(self, r: Recipe, datasets: dict | None = None, env: DistEnv | None = None,
                 print_fn: Callable[[str], None] = print, overwrite: bool = False):
        self.r = r
        self.overwrite = overwrite  # --overwrite: the run folder may hold another run or foreign files
        self._resume_dir: Path | None = None
        if r.get("time_limit") is not None and not float(r["time_limit"]) > 0:  # 0 would stop before step 1
            raise ValueError(f"time_limit must be a positive number of minutes, got {r['time_limit']!r}; "
                             f"leave it unset (--set time_limit=null) for no limit")
        self.env = env or init_distributed(r.get("device", "auto"), r.get("dist_backend", "auto"))
        self._print = print_fn
        self.device = self.env.device
        self._setup_runtime()
        self.warnings = list(r.warnings)

        # ---- model (same initial weights on every rank), then rank-dependent seeding (timm random_seed)
        seed_everything(int(r["seed"]))
        self.model, self.model_kwargs = build_model(r)
        r.adopt_model(self.model)
        self._init_messages: list[str] = []
        if r.get("initial_checkpoint"):
            self._load_initial(r["initial_checkpoint"], partial=bool(r.get("partial")))
        for n_, p in self.model.named_parameters():
            if n_.endswith("talking_heads.weight"):
                p.requires_grad_(False)  # never used in the forward (official); frozen so DDP needs no search
        if r.get("linear_prob"):
            for p in self.model.patch_embed.parameters():
                p.requires_grad_(False)
        self.model.to(self.device)
        seed_everything(int(r["seed"]) + self.env.rank)

        # ---- data
        self.datasets = datasets if datasets is not None else build_datasets(r)
        self.loaders = build_loaders(r, self.datasets, self.env.rank, self.env.world,
                                     pin_memory=bool(r.get("pin_mem")) and self.device.type == "cuda")
        self.num_classes = int(self.model_kwargs["num_classes"])
        self.mixup = build_mixup(r, self.num_classes)
        self.criterion = build_train_criterion(r, self.mixup is not None)
        self.teacher = None
        if (r.get("distillation_type") or "none") != "none":
            if not getattr(self.model, "kd", False):
                raise ValueError(f"distillation_type {r['distillation_type']!r} needs a model with a distillation "
                                 f"head: set kd: true (V2 models)")
            self.teacher = build_teacher(r, self.num_classes, self.device)
        self.is_event = bool(r.get("_is_event"))

        # ---- distributed wrapper
        self.train_model: nn.Module = self.model
        if self.env.distributed:
            if r.get("sync_bn"):
                if self.device.type == "cuda":
                    self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                else:
                    self._warn("sync_bn ignored: SyncBatchNorm needs CUDA (gloo/CPU runs keep per-rank BN "
                               "statistics)")
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                                   find_unused_parameters=bool(r.get("find_unused_parameters")))

        # ---- optimizer, schedule, precision, EMA
        from timm.optim import create_optimizer_v2

        okw: dict[str, Any] = {}
        if r.get("opt_eps") is not None:
            okw["eps"] = r["opt_eps"]
        if r.get("opt_betas") is not None:
            okw["betas"] = tuple(r["opt_betas"])
        if r.get("layer_decay", 1.0) != 1.0:
            okw["layer_decay"] = r["layer_decay"]  # timm groups parameters by the model's group_matcher()
        if r.get("blr") is not None and "lr" not in r.explicit:  # official V2: lr = blr * total batch / 256
            r["lr"] = float(r["blr"]) * int(r["batch_size"]) * self.env.world / 256
        if str(r["opt"]).lower() in ("adam", "adamw") and self.device.type in ("cpu", "cuda") \
                and all(p.dtype in (torch.float32, torch.float64) for p in self.model.parameters()):
            okw["fused"] = True  # one kernel over all parameters: ~3x faster steps than the per-tensor loop on CPU
        self.optimizer = create_optimizer_v2(self.model, opt=r["opt"], lr=r["lr"], weight_decay=r["weight_decay"],
                                             momentum=r["momentum"], **okw)
        self.steps_per_epoch = len(self.loaders["train"])
        self.scheduler, self.num_epochs = self._build_scheduler()
        self.amp_auto = False  # set by _amp_dtype when the recipe leaves amp to the machine
        self.amp_dtype = self._amp_dtype()
        self.scaler = None
        if self.amp_dtype == torch.float16 and self.device.type == "cuda":
            self.scaler = torch.amp.GradScaler("cuda")
        self.ema = None
        if r.get("model_ema"):
            from timm.utils import ModelEmaV2

            self.ema = ModelEmaV2(self.model, decay=r["model_ema_decay"],
                                  device="cpu" if r.get("model_ema_force_cpu") else None)

        # ---- bookkeeping
        self.epoch = 0  # epoch in progress / next to run
        self.batch_in_epoch = 0  # batches of self.epoch already done
        self.global_step = 0
        self.loss_sum = 0.0
        self.loss_n = 0
        self.best_metric: float | None = None
        self.best_epoch = -1
        self.history: list[dict] = []
        self.elapsed_before = 0.0
        self.run_dir: Path | None = None
        self.logger: RunLogger | None = None
        self._lock = None
        resume_path = self._resume_path()
        if resume_path is not None:
            self.load_state(resume_path)
        if r.get("start_epoch") is not None:
            self.epoch, self.batch_in_epoch = int(r["start_epoch"]), 0
            if self.epoch >= self.num_epochs:  # checked before any folder or file is made
                raise ValueError(f"--start-epoch {self.epoch} is beyond the schedule: epochs run 0..{self.num_epochs - 1}"
                                 f" (--epochs {self.num_epochs}), so nothing would be trained")
        self._setup_run_dir(resume_path)

    # -------------------------------------------------------------- set-up helpers
    def _setup_runtime(self) -> None:
        r = self.r
        threads = r.get("threads")
        if threads is None and self.env.distributed and self.device.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.env.world))
            threads = max(1, (os.cpu_count() or 1) // local_world)
        if threads:
            torch.set_num_threads(int(threads))
        if r.get("deterministic"):
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _amp_dtype(self):
        amp = self.r.get("amp")
        if amp is None:  # auto: bf16 autocast where the CPU computes bf16 natively (measured: BENCHMARKS.md §3)
            amp = self.device.type == "cpu" and _cpu_has_native_bf16()
            self.r["amp"] = amp  # resolved once: the run folder's recipe (and a resume) keeps this precision
            self.amp_auto = True
        if not amp:
            return None
        dt = self._pick_amp_dtype()
        if dt == torch.bfloat16 and self.device.type == "cpu" and not _cpu_has_native_bf16():
            self._warn("bf16 autocast requested but this CPU has no native bf16 (no AVX512-BF16 / AMX): oneDNN "
                       "emulates it and training runs several times slower than fp32 (measured ~10x on an AVX2 "
                       "AMD EPYC); pass --no-amp to train in fp32")
        return dt

    def _pick_amp_dtype(self):
        name = (self.r.get("amp_dtype") or "auto").lower()
        if name == "auto":
            return torch.float16 if self.device.type == "cuda" else torch.bfloat16
        if name in ("float16", "fp16", "half"):
            if self.device.type != "cuda":
                self._warn("amp_dtype float16 is CUDA-only; using bfloat16 autocast on the CPU")
                return torch.bfloat16
            return torch.float16
        if name in ("bfloat16", "bf16"):
            return torch.bfloat16
        raise ValueError(f"amp_dtype must be auto, float16 or bfloat16, got {name!r}")

    def amp_ctx(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _build_scheduler(self):
        r = self.r
        sched = (r.get("sched") or "none").lower()
        epochs = int(r["epochs"])
        if sched in ("none", "constant", ""):
            return None, epochs
        from timm.scheduler import create_scheduler_v2

        per_update = bool(r.get("sched_on_updates"))
        s, num_epochs = create_scheduler_v2(
            self.optimizer, sched=sched, num_epochs=epochs, decay_epochs=r["decay_epochs"],
            cooldown_epochs=r["cooldown_epochs"], patience_epochs=r["patience_epochs"], decay_rate=r["decay_rate"],
            min_lr=r["min_lr"], warmup_lr=r["warmup_lr"], warmup_epochs=r["warmup_epochs"], warmup_prefix=False,
            cycle_mul=r["lr_cycle_mul"], cycle_limit=r["lr_cycle_limit"], step_on_epochs=not per_update,
            updates_per_epoch=self.steps_per_epoch)
        return s, num_epochs

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        if self.env.is_main:
            self._print(f"warning: {msg}")

    def _resume_path(self) -> Path | None:
        """The checkpoint ``resume`` continues from; the run folder it continues in goes to ``_resume_dir`` (None:
        a checkpoint outside a run folder, whose run gets a new folder; see ``report.resume_source``)."""
        res = self.r.get("resume")
        if not res:
            return None
        p, self._resume_dir = resume_source(res)
        if p is None:  # killed before its first last.pt: the run starts over in its own folder
            self._note(f"{self._resume_dir} has no last.pt (the run stopped before its first checkpoint): starting "
                       f"it over in its folder")
        elif self._resume_dir is None:
            self._note(f"{p} is not the last.pt of a run folder: the run continues from it in a new run folder")
        return p

    def _setup_run_dir(self, resume_path: Path | None) -> None:
        """Claim the run folder (rank 0; see ``report.open_run_dir``: locked for the run's life, refused when busy
        or holding another run) and share it with the other ranks."""
        r = self.r
        if not r.get("save_checkpoints", True) and not r.get("output"):
            return
        msg = None
        if self.env.is_main:
            default = f"{r.data_label or 'data'}-{self.model.model_name}-t{self.model.T}"
            try:
                d, self._lock, removed = open_run_dir(r.get("output") or "runs", r.get("experiment") or "", default,
                                                      self._resume_dir, overwrite=self.overwrite)
                msg = str(d)
            except Exception as e:  # noqa: BLE001 - sent to every rank, then raised
                msg, err = None, e
        shared = broadcast_object(msg if self.env.is_main else None, self.env)
        if shared is None:
            if self.env.is_main:
                raise err
            raise RuntimeError("rank 0 could not claim the run folder (see its message)")
        self.run_dir = Path(shared)
        if self.env.is_main:
            write_text_atomic(self.run_dir / "config.yaml", "# resolved recipe (spikedriven train --config "
                              "this-file reproduces the run)\n" + self.r.to_yaml())
            self.logger = RunLogger(self.run_dir, tensorboard=bool(r.get("tensorboard")),
                                    resume=self._resume_dir is not None)
            if self._lock is not None and self._lock.stale:
                self._note(f"took over the stale lock of a run that no longer runs ({self._lock.stale})")
            if removed:
                self._note(f"removed {len(removed)} temporary file(s) left by an interrupted write: "
                           f"{', '.join(sorted(removed))}")
            for w in self.warnings:
                self.logger.log(f"warning: {w}")

    def _note(self, msg: str) -> None:
        self._init_messages.append(msg)

    def close(self) -> None:
        """Release the run folder (its lock); called when the run ends, however it ends."""
        if self.logger is not None:
            self.logger.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __del__(self):
        try:
            if getattr(self, "_lock", None) is not None:
                self._lock.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _load_initial(self, path, partial: bool) -> None:
        """``initial_checkpoint``: start from these weights, strictly; with ``partial`` only the keys the file and
        the model share, and say which were not loaded."""
        from ..models.finetune import without_classifier

        sd, _ = load_checkpoint(path)
        sd, note = without_classifier(self.model, sd, str(path))  # another number of classes: fine-tuning
        info = load_state_into_model(self.model, sd, strict=not partial, source=str(path))
        if note:
            self._note(note)
        if partial:
            self._note(_partial_line(path, info))

    def log(self, msg: str) -> None:
        if self.env.is_main:
            self._print(msg)
            if self.logger:
                self.logger.log(msg)

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        st = {
            "version": CKPT_VERSION,
            "arch": self.model.model_name,
            "family": self.model.model_family,
            "epoch": self.epoch if self.batch_in_epoch else self.epoch - 1,  # last completed epoch (official)
            "next_epoch": self.epoch,
            "next_batch": self.batch_in_epoch,
            "global_step": self.global_step,
            "train_loss_sum": self.loss_sum,
            "train_loss_n": self.loss_n,
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "model_kwargs": dict(self.model_kwargs),
            "recipe": {**self.r, "_explicit": sorted(self.r.explicit)},  # explicit: which model keys were set
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "history": list(self.history),
            "elapsed_s": self.elapsed(),
            "world_size": self.env.world,
        }
        if self.ema is not None:
            st["state_dict_ema"] = self.ema.module.state_dict()
        return st

    def load_state(self, path: Path) -> None:
        """Continue from ``path``: our checkpoint exactly (weights, optimizer, schedule, RNG, position), a foreign
        one by its weights (strictly unless ``partial``) and epoch (``training.resume.restore``)."""
        restore(self, path)

    def save(self, name: str) -> None:
        if self.env.is_main and self.run_dir is not None and self.r.get("save_checkpoints", True):
            atomic_save(self.state_dict(), self.run_dir / name)

    # -------------------------------------------------------------- training
    def elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self._t0 if hasattr(self, "_t0") else 0.0)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _plateau(self) -> bool:
        return (self.r.get("sched") or "").lower() == "plateau"

    def _set_schedule(self) -> None:
        if self.scheduler is None or self._plateau():
            return
        if self.r.get("sched_on_updates"):
            self.scheduler.step_update(self.global_step)
        else:
            self.scheduler.step(self.epoch)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        r = self.r
        _check_labels(y, self.num_classes)  # on the host tensor: no device synchronisation
        x = x.to(self.device, non_blocking=True).float()
        y = y.to(self.device, non_blocking=True)
        step_seed = _sample_seed(int(r["seed"]) + 7919 * self.env.rank, self.epoch, self.batch_in_epoch)
        if self.is_event and r.get("dvs_aug"):
            x = batch_cutout(x, torch.Generator().manual_seed(step_seed))
        mix_on = self.mixup is not None and not (r["mixup_off_epoch"] and self.epoch >= r["mixup_off_epoch"])
        if self.mixup is not None and not mix_on:
            self.mixup.mixup_enabled = False
        if self.mixup is not None:
            x, y = apply_mixup(self.mixup, x, y, step_seed)  # smoothed one-hot even when mixing is off
        with self.amp_ctx():
            out = self.train_model(x)
            t_out = None
            if self.teacher is not None:
                with torch.no_grad():
                    t_out = self.teacher(x).float()
        if self.teacher is not None:
            loss = self.criterion(tuple(o.float() for o in out), y, t_out)
        else:  # a kd model trained without a teacher: its main head learns
            loss = self.criterion((out[0] if isinstance(out, tuple) else out).float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch} step {self.global_step}; "
                                     f"lower lr, enable clip_grad or disable amp")
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = self.r.get("clip_grad")
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                _clip(params, clip, r["clip_mode"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip is not None:
                _clip(params, clip, r["clip_mode"])
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.global_step += 1
        self.batch_in_epoch += 1
        if self.scheduler is not None and r.get("sched_on_updates"):
            self.scheduler.step_update(self.global_step)
        return float(loss.detach())

    def fit(self) -> dict:
        """Train until the schedule ends or the stop policy (``stop_after_steps``, ``time_limit``) says so."""
        self._t0 = time.time()
        self.log(self._describe())
        for m in self._init_messages:
            self.log(m)
        if self.run_dir is not None:
            self.log(f"run folder: {self.run_dir}")
        stop = StopPolicy(self.r, self.env)
        reason = None
        while self.epoch < self.num_epochs and reason is None:
            epoch, t_ep = self.epoch, time.time()
            reason = self._run_epoch(stop)
            if reason == "steps" and self.batch_in_epoch < self.steps_per_epoch:  # stopped inside the epoch
                self.save("last.pt")
                self.log(f"stopped after step {self.global_step} (epoch {epoch}, batch {self.batch_in_epoch}); "
                         f"continue with --resume {self.run_dir}")
                break
            if reason is None and stop.over_time(self.elapsed()):
                reason = "time"
            self._end_epoch(epoch, t_ep, reason)
        barrier(self.env)
        result = self._final(reason == "steps")
        self.close()
        return result

    def _describe(self) -> str:
        r, ds = self.r, self.loaders["train"].dataset
        n_params = sum(p.numel() for p in self.model.parameters())
        arch = self.model.arch_summary() if hasattr(self.model, "arch_summary") else ""
        return (f"model {self.model.model_name} ({arch}), {n_params:,} parameters; data {r.data_label}: {len(ds)} "
                f"train / {len(self.loaders['test'].dataset)} test samples; {self.env.world} process(es) on "
                f"{self.device}, {torch.get_num_threads()} thread(s); {self.steps_per_epoch} steps/epoch x "
                f"{self.num_epochs} epochs; opt {r['opt']} lr {r['lr']:g} sched {r['sched']}"
                + (f" amp {str(self.amp_dtype).replace('torch.', '')}" if self.amp_dtype else "")
                + (" (auto: native bf16 on this CPU)" if self.amp_dtype and self.amp_auto else "")
                + (" mixup" if self.mixup else "") + (" TET" if r.get("TET") else "") + (" EMA" if self.ema else ""))

    def _run_epoch(self, stop: "StopPolicy") -> str | None:
        """Train the rest of epoch ``self.epoch``; returns None when it completed, else why it stopped early
        ("steps": stop_after_steps reached, "time": the time limit, a hard budget checked every step)."""
        r = self.r
        loader = self.loaders["train"]
        self._set_schedule()
        if self.batch_in_epoch == 0:
            self.loss_sum, self.loss_n = 0.0, 0
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(self.epoch)
        loader.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch * int(r["batch_size"]))
        self.train_model.train()
        bar = None
        if r.get("progress") and self.env.is_main:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}/"
                       f"{self.num_epochs}", dynamic_ncols=True, mininterval=1.0, leave=False, file=sys.stderr)
        every = int(r.get("checkpoint_every") or 0)
        reason = None
        try:
            for x, y in loader:
                loss = self.train_step(x, y)
                self.loss_sum += loss
                self.loss_n += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.loss_sum / self.loss_n:.3f}", lr=f"{self.current_lr():.2e}",
                                    refresh=False)
                if self.logger and self.global_step % max(int(r["log_interval"]), 1) == 0:
                    self.logger.scalar("train/loss", loss, self.global_step)
                    self.logger.scalar("train/lr", self.current_lr(), self.global_step)
                reason = stop.after_step(self.global_step, self.elapsed())
                if reason:
                    break
                if every and self.global_step % every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                    self.save("last.pt")
        finally:
            if bar is not None:
                bar.close()
        return reason

    def _end_epoch(self, epoch: int, t_ep: float, reason: str | None) -> None:
        """Epoch end (or the point where the time limit stopped it): evaluate, log, rank, checkpoint, plot."""
        r = self.r
        train_loss = self.loss_sum / max(self.loss_n, 1)
        train_loss = all_reduce_sum([train_loss], self.env)[0] / self.env.world
        partial = reason == "time" and self.batch_in_epoch < self.steps_per_epoch
        if not partial:
            self.epoch, self.batch_in_epoch = epoch + 1, 0
        last = self.epoch >= self.num_epochs
        row = {"epoch": epoch, "step": self.global_step, "train_loss": train_loss, "lr": self.current_lr()}
        if (epoch + 1) % max(int(r.get("eval_every") or 1), 1) == 0 or last or reason:
            row.update(self._evaluate_epoch())
        row["epoch_time_s"] = time.time() - t_ep
        row["elapsed_s"] = self.elapsed()
        self.history.append(row)
        improved = self._rank(row)
        if self.scheduler is not None and self._plateau() and "top1" in row:
            self.scheduler.step(self.epoch, row[_metric_key(r)])
        if self.logger:
            self.logger.epoch_row(row)
        self.log(_epoch_line(row, self.num_epochs, self.ema is not None))
        # best.pt before last.pt: a kill between the two leaves last.pt one epoch behind (resume redoes the epoch
        # and writes the same best again) instead of a last.pt that claims a best model best.pt does not hold
        if improved:
            self._save_best()
        self.save("last.pt")
        if self.env.is_main and r.get("plot") and self.run_dir is not None:
            plot_curve(self.run_dir / "metrics.csv", self.run_dir / "curve.png", self._title(),
                       steps_per_epoch=self.steps_per_epoch)
        if reason == "time" and not last:
            where = (f"in epoch {epoch + 1} (batch {self.batch_in_epoch}/{self.steps_per_epoch})" if partial
                     else f"after epoch {epoch + 1}")
            self.log(f"time limit of {r['time_limit']} min reached {where}; continue with a larger --time-limit "
                     f"and --resume {self.run_dir}")

    def _title(self) -> str:
        return f"{self.r.data_label}: {self.model.model_name} T={self.model.T}"

    def _evaluate_epoch(self) -> dict:
        res = evaluate(self.model, self.loaders["test"], self.device, self.env, self.amp_ctx,
                       progress=bool(self.r.get("progress")) and self.env.is_main)
        row = {"eval_loss": res["loss"], "top1": res["top1"], "top5": res["top5"]}
        if self.ema is not None:
            e = evaluate(self.ema.module, self.loaders["test"], self.device, self.env, self.amp_ctx)
            row.update({"ema_top1": e["top1"], "ema_top5": e["top5"], "ema_loss": e["loss"]})
        return row

    def _rank(self, row: dict) -> bool:
        if "top1" not in row:
            return False
        key = _metric_key(self.r)
        ema_key = {"top1": "ema_top1", "top5": "ema_top5", "eval_loss": "ema_loss"}[key]
        val = row[ema_key] if self.ema is not None else row[key]  # official: EMA metrics rank when enabled
        better = (self.best_metric is None or (val < self.best_metric if key == "eval_loss" else
                                               val > self.best_metric))
        if better:
            self.best_metric, self.best_epoch = float(val), int(row["epoch"])
        return better

    def _save_best(self) -> None:
        if not (self.env.is_main and self.run_dir is not None and self.r.get("save_checkpoints", True)):
            return
        st = self.state_dict()
        st["metric"] = self.best_metric
        atomic_save(st, self.run_dir / "best.pt")
        if self.r.get("save_safetensors"):
            src = self.ema.module if self.ema is not None else self.model
            meta = {"epoch": str(self.best_epoch), "metric": f"{self.best_metric}", "arch": st["arch"],
                    "model_kwargs": repr(self.model_kwargs), "ema": str(self.ema is not None)}
            save_safetensors(src, self.run_dir / "best.safetensors", metadata=meta)

    def _final(self, stopped: bool) -> dict:
        last = self.history[-1] if self.history else {}
        out = {"run_dir": str(self.run_dir) if self.run_dir else None, "epochs_run": self.epoch,
               "global_step": self.global_step, "stopped": stopped, "elapsed_s": self.elapsed(),
               "best_metric": self.best_metric, "best_epoch": self.best_epoch, "history": self.history}
        for k in ("top1", "top5", "eval_loss", "ema_top1", "train_loss"):
            if k in last:
                out[k] = last[k]
        return out

    def summary(self, n_batches: int = 4) -> str:
        """Firing-rate / energy summary of the trained model on a few test batches (rank 0)."""
        batches = []
        for i, (x, _) in enumerate(self.loaders["test"]):
            if i >= n_batches:
                break
            batches.append(x.to(self.device).float())
        model = self.ema.module if self.ema is not None else self.model
        return energy_summary(model, batches)


def _metric_key(r) -> str:
    m = (r.get("eval_metric") or "top1").lower()
    keys = {"top1": "top1", "top5": "top5", "loss": "eval_loss", "eval_loss": "eval_loss"}
    if m not in keys:
        raise ValueError(f"eval_metric must be one of {', '.join(keys)}, got {m!r}")
    return keys[m]


def _clip(params, value: float, mode: str) -> None:
    from timm.utils import dispatch_clip_grad

    dispatch_clip_grad(params, value=value, mode=mode)


def _epoch_line(row: dict, num_epochs: int, ema: bool) -> str:
    s = (f"epoch {row['epoch'] + 1}/{num_epochs}  train loss {row['train_loss']:.4f}  lr {row['lr']:.2e}")
    if "top1" in row:
        s += f"  test loss {row['eval_loss']:.4f}  top-1 {row['top1']:.2f}%  top-5 {row['top5']:.2f}%"
    if ema and "ema_top1" in row:
        s += f"  EMA top-1 {row['ema_top1']:.2f}%"
    s += f"  ({row['epoch_time_s']:.1f} s, total {row['elapsed_s'] / 60:.1f} min)"
    return s
