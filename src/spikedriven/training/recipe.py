"""The training recipe: one flat mapping of settings with the official ``train.py`` key names.

Resolution (lowest to highest priority), as in the official two-stage argparse (spec §5.1):

1. defaults: the official ``train.py`` argparse defaults (so an official YAML that omits a key behaves as it
   did there), plus our own keys (``drop_path_rate``, ``amp_dtype``, ``sched_on_updates``, ...);
2. the YAML file (``--config``): ours under ``spikedriven/configs/`` or any official ``conf/**/*.yml``;
   keys are argparse *dest* names, so hyphenated keys (``model-ema``) are no-ops there and here (warned);
3. command-line options: every key is an option (``--warmup-epochs 5``, ``--no-amp``, ``--TET``), and
   ``--set KEY=VALUE`` sets any key with a YAML-parsed value.

``dataset``-dependent keys left unset (``num_classes``, ``in_channels``, ``img_size``, ``mean``, ``std``) are
filled from ``spikedriven.data.DATASET_INFO``.
"""
from __future__ import annotations

import copy
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..config.official import ConfigWarning, load_yaml, official_noop_warnings
from ..data.info import DATASET_ALIASES, DATASET_INFO, canonical_name, is_event
from .recipe_checks import did_you_mean, fill_from_folder, refuse_unusable

__all__ = ["Recipe", "SCHEMA", "Allowed", "check_value", "allowed_text", "ALIASES", "MODEL_KEYS", "DEFAULT_CONFIG",
           "recipe_of_run", "resolve_recipe", "find_config", "list_configs", "DATASET_ALIASES", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "digits"  # the main job: what `spikedriven train` runs with no arguments

# ------------------------------------------------------------------------------------------- allowed values
class Allowed:
    """What a recipe key accepts beyond its type: ``ok(value)`` and the words that say it (``text``)."""

    def __init__(self, ok, text: str):
        self.ok, self.text = ok, text

    def __repr__(self):
        return f"Allowed({self.text})"


def _fmt_num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def rng(lo=None, hi=None, lo_open: bool = False, hi_open: bool = False, text: str | None = None) -> Allowed:
    """A finite number in [lo, hi] (``lo_open``/``hi_open``: the bound excluded; None: unbounded); ``text``
    replaces the generated description."""
    def ok(v):
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if hi_open else v > hi))

    if text:
        pass
    elif lo is not None and hi is not None:
        text = f"a number in {'(' if lo_open else '['}{_fmt_num(lo)}, {_fmt_num(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        text = f"a number {'>' if lo_open else '>='} {_fmt_num(lo)}"
    elif hi is not None:
        text = f"a number {'<' if hi_open else '<='} {_fmt_num(hi)}"
    else:
        text = text or "a finite number"
    return Allowed(ok, text)


def one_of(*choices: str) -> Allowed:
    shown = ", ".join(repr(c) if c == "" else c for c in choices)
    a = Allowed(lambda v: v in choices, f"one of {shown}")
    a.names = lambda: [c for c in choices if c]
    return a


def lazy_one_of(load, what: str) -> Allowed:
    """Choices known only at run time (registries): ``load()`` returns them, or None when it cannot tell."""
    def ok(v):
        names = load()
        return names is None or v in names

    def text():
        names = sorted(n for n in (load() or []) if n)
        if not names or len(names) > 24:
            return what
        return f"{what}: {', '.join(names)}"

    a = Allowed(ok, what)
    a.text_fn = text
    a.names = lambda: sorted(n for n in (load() or []) if n)
    return a


def pattern(regex: str, text: str) -> Allowed:
    rx = re.compile(regex)
    return Allowed(lambda v: bool(rx.fullmatch(v)), text)


def each(rule: Allowed, n=None, ordered: bool = False) -> Allowed:
    """A list whose items all satisfy ``rule``; ``n``: its length (an int or a tuple of allowed lengths);
    ``ordered``: non-decreasing (a min, max pair)."""
    lengths = (n,) if isinstance(n, int) else n

    def ok(v):
        if lengths is not None and len(v) not in lengths:
            return False
        if not all(rule.ok(x) for x in v):
            return False
        return not (ordered and any(a > b for a, b in zip(v, v[1:])))

    size = "" if lengths is None else " or ".join(map(str, lengths)) + " "
    return Allowed(ok, f"a list of {size}values, each {rule.text}" + (", in increasing order" if ordered else ""))


PROB = rng(0, 1)
NONEMPTY = Allowed(lambda v: bool(v.strip()), "a non-empty string")
_INTERP = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
AUTO_AUGMENT = Allowed(lambda v: v.split("-")[0] in ("rand", "augmix", "original", "originalr", "v0", "v0r", "3a")
                       or v in ("", "none"),
                       "a timm policy string: rand-..., augmix-..., original, originalr, v0, v0r or 3a")
DATASET_NAME = Allowed(lambda v: v == "" or canonical_name(v) in DATASET_INFO,
                       f"a dataset name: {', '.join(sorted(DATASET_INFO))}")
def _is_timm_model(name: str) -> bool:
    try:
        from timm.models import is_model
    except ImportError:  # pragma: no cover - timm is a dependency
        return True
    return name == "" or is_model(name.split(".")[0])


TIMM_MODEL = Allowed(_is_timm_model, "empty or a timm model name (timm.list_models())")
RUN_NAME = Allowed(lambda v: v == "" or (not os.path.isabs(v) and ".." not in Path(v).parts
                                        and Path(v).parts not in ((), (".",))),
                   "a folder name inside the output folder (relative, without '..')")


def _model_names():
    from ..models.registry import list_families, list_models

    return {"sdt", "", *list_families(), *list_models()}


def _attention_names():
    from ..layers.attention import list_attention

    return set(list_attention())


def _optimizer_names():
    try:
        from timm.optim import list_optimizers
    except ImportError:
        return None
    names = set(list_optimizers())
    return names | {f"lookahead_{n}" for n in names}


MODEL_NAME = lazy_one_of(_model_names, "'sdt' (built from dim/layer/...) or a registered model (spikedriven models)")
ATTENTION = lazy_one_of(_attention_names, "a registered attention variant")
OPTIMIZER = lazy_one_of(_optimizer_names, "a timm optimizer name (sgd, momentum, adamw, lamb, ...: "
                                           "timm.optim.list_optimizers())")


def allowed_text(key: str) -> str:
    rule = SCHEMA[key][3]
    typ = SCHEMA[key][1]
    kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "floats": "a list of numbers", "ints": "a list of integers",
            "strs": "a list of names"}[typ.replace("opt_", "")]
    text = (rule.text_fn() if hasattr(rule, "text_fn") else rule.text) if rule is not None else kind
    if typ.replace("opt_", "") == "int":
        text = text.replace("a number", "an integer")
    return text + (" (or null: unset)" if typ.startswith("opt_") else "")



# key: (default, type, help, allowed values: an Allowed or None for any value of the type).
# Types: int float str bool floats (list) opt_* (None allowed).
# Defaults are the official train.py argparse defaults where the key exists there.
SCHEMA: dict[str, tuple[Any, str, str, Any]] = {
    # ---- data
    "dataset": ("", "str", "dataset name (spikedriven.data: digits, fashion-mnist, cifar10, cifar100, imagenet, "
                "gesture, cifar10-dvs, cifar10-dvs-tet, sim-fashion-mnist-dvs; imagefolder: your own images under "
                "data_dir, D/train/<class>/*, D/val/<class>/*; official 'torch/cifar10' accepted)",
                DATASET_NAME),
    "data_dir": ("", "str", "dataset root (empty: the data module's default location)", None),
    "train_split": ("train", "str", "training split", one_of("train", "training")),
    "val_split": ("validation", "str", "evaluation split (validation/val/test all mean the held-out split)",
                  one_of("validation", "val", "test", "eval")),
    "img_size": (None, "opt_int", "input side in pixels (default: the dataset's)", rng(1, 8192)),
    "in_channels": (None, "opt_int", "input channels (default: the dataset's)", rng(1, 4096)),
    "num_classes": (None, "opt_int", "classes (default: the dataset's)", rng(1, 1_000_000)),
    "mean": (None, "opt_floats", "normalisation mean (default: the dataset's)", each(rng())),
    "std": (None, "opt_floats", "normalisation std (default: the dataset's)", each(rng(0, None, lo_open=True))),
    "class_names": (None, "opt_strs", "class names, label i = name i (default: imagefolder's training "
                    "sub-folders; a run stores them and refuses a folder with other classes)",
                    Allowed(lambda v: len(v) > 0 and all(str(n).strip() for n in v), "a list of non-empty names")),
    "crop_pct": (None, "opt_float", "eval Resize(img/crop_pct) then CenterCrop(img) (default 1.0 for small "
                 "images, 0.875 timm default otherwise)", rng(0, 1, lo_open=True)),
    "interpolation": ("", "str", "eval interpolation (bicubic, bilinear, ...; empty = bilinear)", one_of("", *_INTERP)),
    "train_interpolation": ("random", "str", "train RandomResizedCrop interpolation", one_of("random", *_INTERP)),
    "scale": ([0.08, 1.0], "floats", "RandomResizedCrop scale range", each(rng(0, 1, lo_open=True), n=2, ordered=True)),
    "ratio": ([3 / 4, 4 / 3], "floats", "RandomResizedCrop aspect-ratio range",
              each(rng(0, None, lo_open=True), n=2, ordered=True)),
    "hflip": (0.5, "float", "horizontal flip probability", PROB),
    "vflip": (0.0, "float", "vertical flip probability", PROB),
    "color_jitter": (0.4, "float", "colour jitter (inactive when aa is set, as in timm 0.6.12)", rng(0)),
    "aa": (None, "opt_str", "auto-augment policy, e.g. rand-m9-n1-mstd0.4-inc1 (RandAugment)", AUTO_AUGMENT),
    "no_aug": (False, "bool", "disable all training augmentation", None),
    "reprob": (0.0, "float", "random erasing probability", PROB),
    "remode": ("const", "str", "random erasing mode", one_of("const", "rand", "pixel")),
    "recount": (1, "int", "random erasing count", rng(1, 1000)),
    "mixup": (0.0, "float", "mixup alpha (0 = off)", rng(0)),
    "cutmix": (0.0, "float", "cutmix alpha (0 = off)", rng(0)),
    "cutmix_minmax": (None, "opt_floats", "cutmix min/max ratio (overrides alpha)", each(rng(0, 1), n=2, ordered=True)),
    "mixup_prob": (1.0, "float", "probability of applying mixup or cutmix per batch", PROB),
    "mixup_switch_prob": (0.5, "float", "probability of cutmix instead of mixup when both are on", PROB),
    "mixup_mode": ("batch", "str", "batch | pair | elem", one_of("batch", "pair", "elem")),
    "mixup_off_epoch": (0, "int", "turn mixup off from this epoch on (0 = never)", rng(0)),
    "smoothing": (0.1, "float", "label smoothing", rng(0, 1, hi_open=True)),
    "bce_loss": (False, "bool", "binary cross-entropy on (mixed) targets instead of soft-target CE", None),
    "bce_target_thresh": (None, "opt_float", "binarise BCE targets at this threshold", PROB),
    "dvs_aug": (False, "bool", "event data: Cutout (1 hole, 16 px) on the whole batch (official --dvs-aug)", None),
    "dvs_trival_aug": (False, "bool", "event data: per-sample SNNAugmentWide (official --dvs-trival-aug)", None),
    "batch_size": (32, "int", "training batch per process", rng(1)),
    "val_batch_size": (16, "int", "evaluation batch per process", rng(1)),
    "workers": (4, "int", "DataLoader worker processes (0 = load in the main process)", rng(0, 256)),
    "pin_mem": (False, "bool", "pin host memory (CUDA)", None),
    "max_train_samples": (None, "opt_int", "use a fixed random subset of N training samples (quick runs)", rng(1)),
    "max_eval_samples": (None, "opt_int", "use a fixed random subset of N evaluation samples (quick runs)", rng(1)),
    # ---- model (official key names: dim, layer, time_steps)
    "model": ("sdt", "str", "'sdt' (build from dim/layer/... keys) or a registered name (spikedriven models)",
              MODEL_NAME),
    "dim": (None, "opt_int", "embedding dimension D", rng(1)),
    "layer": (4, "int", "encoder blocks L", rng(1)),
    "time_steps": (4, "int", "time steps T", rng(1, 10_000)),
    "num_heads": (8, "int", "attention heads", rng(1)),
    "mlp_ratio": (4.0, "float", "MLP expansion", rng(0, None, lo_open=True)),
    "pooling_stat": ("1111", "str", "stem max-pool switches, 4 chars of 0/1 (quote it in YAML)", pattern(r"[01]{4}",
                     "4 characters of 0/1 such as \"0011\"")),
    "spike_mode": ("lif", "str", "lif | plif", one_of("lif", "plif")),
    "TET": (False, "bool", "TET loss on per-step logits (a real boolean flag: --TET / --no-TET)", None),
    "TET_means": (1.0, "float", "TET MSE target", rng()),
    "TET_lamb": (0.0, "float", "TET MSE weight lambda", rng(0)),
    "distillation_type": ("none", "str", "knowledge distillation from a teacher (DeiT): none | hard | soft; needs a "
                          "model with kd (its head_kd learns from the teacher)", one_of("none", "hard", "soft")),
    "distillation_alpha": (0.5, "float", "weight of the distillation loss: (1-a) CE(head, y) + a KD(head_kd)", PROB),
    "distillation_tau": (1.0, "float", "soft distillation temperature", rng(0, None, lo_open=True)),
    "kd_teacher": ("", "str", "teacher: a timm model name (e.g. caformer_b36.sail_in22k_ft_in1k), built without "
                   "downloading", TIMM_MODEL),
    "kd_teacher_checkpoint": ("", "str", "the teacher's weights (a local file, read safely)", None),
    "drop_path": (0.2, "float", "official key: a no-op there (DropPath never called); see drop_path_rate",
                  rng(0, 1, hi_open=True)),
    "drop_path_rate": (0.0, "float", "stochastic depth actually applied (ours; 0 = the official behaviour)",
                       rng(0, 1, hi_open=True)),
    "drop": (0.0, "float", "dropout rate (the SDT has no dropout layer: must stay 0)", rng(0, 1, hi_open=True)),
    "dvs_mode": (None, "opt_bool", "Erode on K/V (default: dataset is cifar10-dvs or cifar10-dvs-tet)", None),
    "attn_mode": ("sdsa", "str", "attention variant (ablations): sdsa | sdsa_v1 | ssa | softmax", ATTENTION),
    "shortcut": ("ms", "str", "shortcut variant (ablations): ms | sew | none", one_of("ms", "sew", "none")),
    "lif_backend": (None, "opt_str", "neuron implementation: auto | torch | cpp | triton (default: env/auto)",
                    one_of("auto", "torch", "cpp", "triton")),
    "embed_dims": (None, "opt_ints", "V2 stage widths D0 D1 D2 D3 (sdt_v2 models; default: the model's)",
                   each(rng(1, None), n=4)),
    "downsample_strides": (None, "opt_ints", "V2 strides of the 5 downsampling layers (official 2 2 2 2 1)",
                           each(rng(1, 4), n=5)),
    "kd": (None, "opt_bool", "V2 distillation head head_kd (default: the model's)", None),
    "pretrained": (False, "bool", "official key; no pretrained download here (use initial_checkpoint)", None),
    "initial_checkpoint": ("", "str", "start from these weights, strictly (every key of the model must be in "
                           "the file; see partial)", None),
    "partial": (False, "bool", "with initial_checkpoint (or --resume of a foreign checkpoint): load only the keys "
                "the file and the model share and print the ones not loaded", None),
    "linear_prob": (False, "bool", "freeze patch_embed (official --linear-prob)", None),
    # ---- optimisation
    "opt": ("sgd", "str", "optimizer (timm create_optimizer_v2 names: adamw, lamb, sgd, ...)", OPTIMIZER),
    "opt_eps": (None, "opt_float", "optimizer epsilon", rng(0, None, lo_open=True)),
    "opt_betas": (None, "opt_floats", "optimizer betas", each(rng(0, 1, hi_open=True), n=(2, 3))),
    "momentum": (0.9, "float", "SGD momentum", PROB),
    "weight_decay": (1e-4, "float", "weight decay (not applied to biases and 1-D parameters)", rng(0)),
    "clip_grad": (None, "opt_float", "gradient clipping threshold (None = off)", rng(0, None, lo_open=True)),
    "clip_mode": ("norm", "str", "norm | value | agc", one_of("norm", "value", "agc")),
    "sched": ("step", "str", "learning-rate schedule (timm: cosine, step, multistep, tanh, poly, plateau, none)",
              one_of("cosine", "step", "multistep", "tanh", "poly", "plateau", "none", "constant", "")),
    "sched_on_updates": (False, "bool", "step the schedule every iteration (ours) instead of once per epoch", None),
    "lr": (0.01, "float", "peak learning rate (not rescaled by the world size, as official)",
           rng(0, None, lo_open=True)),
    "blr": (None, "opt_float", "base learning rate per 256 images (official V2): lr = blr x batch_size x "
            "processes / 256 (when lr is not set explicitly)", rng(0, None, lo_open=True)),
    "layer_decay": (1.0, "float", "layer-wise lr decay (BEiT/timm groups from the model's group_matcher; 1 = none)",
                    rng(0, 1, lo_open=True)),
    "lr_cycle_mul": (1.0, "float", "cosine cycle length multiplier", rng(0, None, lo_open=True)),
    "lr_cycle_limit": (1, "int", "cosine cycles", rng(1)),
    "warmup_lr": (1e-4, "float", "learning rate at the start of warm-up", rng(0)),
    "min_lr": (1e-5, "float", "cosine floor", rng(0)),
    "epochs": (200, "int", "schedule length; epochs run = epochs + cooldown_epochs", rng(1)),
    "cooldown_epochs": (10, "int", "epochs at min_lr after the schedule", rng(0)),
    "warmup_epochs": (3, "int", "warm-up epochs (overlapping the cosine, warmup_prefix=False, as official)", rng(0)),
    "decay_epochs": (30, "float", "step schedule period", rng(0, None, lo_open=True)),
    "decay_rate": (0.1, "float", "step schedule factor", rng(0, None, lo_open=True)),
    "patience_epochs": (10, "int", "plateau schedule patience", rng(0)),
    "start_epoch": (None, "opt_int", "override the start epoch (also after --resume)", rng(0)),
    # ---- EMA, precision, distributed
    "model_ema": (False, "bool", "keep an EMA of the weights (timm ModelEmaV3); it is evaluated and ranks "
                  "checkpoints", None),
    "model_ema_decay": (0.9998, "float", "EMA decay", rng(0, 1)),
    "model_ema_force_cpu": (False, "bool", "keep the EMA on the CPU", None),
    "amp": (False, "opt_bool", "mixed precision: true = CUDA fp16 (GradScaler) / bf16, CPU bf16 autocast; false = "
            "fp32; null = auto: bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX), fp32 elsewhere "
            "(recipes whose paired fp32/bf16 run showed no accuracy loss: fashion_mnist)", None),
    "amp_dtype": ("auto", "str", "auto (CUDA float16, CPU bfloat16) | float16 | bfloat16",
                  one_of("auto", "float16", "fp16", "half", "bfloat16", "bf16")),
    "channels_last": (False, "bool", "official memory-format switch; spikedriven chooses its layout itself", None),
    "sync_bn": (False, "bool", "SyncBatchNorm under DDP (CUDA only; ignored with a warning on CPU)", None),
    "find_unused_parameters": (False, "bool", "DDP find_unused_parameters (not needed: the unused "
                               "talking_heads weight is frozen instead)", None),
    "dist_backend": ("auto", "str", "auto (nccl on CUDA, gloo on CPU) | nccl | gloo", one_of("auto", "nccl", "gloo")),
    "device": ("auto", "str", "auto | cpu | cuda | cuda:N", pattern(r"auto|cpu|cuda(:\d+)?|mps",
               "auto, cpu, cuda or cuda:N")),
    "threads": (None, "opt_int", "torch CPU threads per process", rng(1, 4096)),
    # ---- run control, output
    "seed": (42, "int", "random seed (rank-dependent, as timm random_seed(seed, rank))", rng(0, 2**63 - 1)),
    "deterministic": (False, "bool", "torch.use_deterministic_algorithms (bit-exact resume on CPU holds anyway)", None),
    "output": ("runs", "str", "parent folder of run folders", NONEMPTY),
    "experiment": ("", "str", "run folder name (default <timestamp>-<dataset>-<model>)", RUN_NAME),
    "resume": ("", "str", "checkpoint (last.pt) or run folder to continue exactly", None),
    "no_resume_opt": (False, "bool", "on resume, load only the weights", None),
    "eval_metric": ("top1", "str", "top1 | top5 | loss: ranks best.pt", one_of("top1", "top5", "loss", "eval_loss")),
    "log_interval": (50, "int", "log every N steps (TensorBoard, log file)", rng(1)),
    "checkpoint_every": (0, "int", "also write last.pt every N steps inside an epoch (0 = epoch ends only)", rng(0)),
    "recovery_interval": (0, "int", "official name for checkpoint_every", rng(0)),
    "eval_every": (1, "int", "evaluate every N epochs (and always after the last)", rng(1)),
    "stop_after_steps": (None, "opt_int", "stop (with last.pt) after this many steps, e.g. to test resume", rng(1)),
    "time_limit": (None, "opt_float", "minutes of training: stop there (mid-epoch if need be), evaluate and save",
                   rng(0, None, lo_open=True, text="a positive number of minutes")),
    "progress": (True, "bool", "progress bar", None),
    "tensorboard": (True, "bool", "write TensorBoard logs under tb/", None),
    "plot": (True, "bool", "write curve.png", None),
    "summary": (True, "bool", "print a firing-rate / energy summary of the trained model", None),
    "save_safetensors": (True, "bool", "also write best.safetensors", None),
    "save_checkpoints": (True, "bool", "write last.pt / best.pt", None),
}

# Keys that describe only the model (the rest of the recipe is data and optimisation). With a registered model
# name they override its configuration only when set explicitly.
MODEL_KEYS = {"dim", "layer", "time_steps", "num_heads", "mlp_ratio", "pooling_stat", "spike_mode", "TET",
              "drop_path_rate", "attn_mode", "shortcut", "dvs_mode", "lif_backend", "embed_dims", "downsample_strides",
              "kd"}

ALIASES = {"init_from": "initial_checkpoint", "b": "batch_size", "vb": "val_batch_size", "j": "workers", "tet": "TET",
           "tet_means": "TET_means", "tet_lamb": "TET_lamb", "T": "time_steps", "embed_dim": "dim", "depth": "layer"}


# Official keys that exist in train.py (and in the conf files) but that this trainer does not implement.
# A warning is given when they are set to something other than their default.
UNSUPPORTED: dict[str, str] = {
    "apex_amp": "Apex is not supported; native AMP is used",
    "native_amp": "native AMP is what `amp` uses",
    "aug_splits": "augmentation splits (AugMix/JSD) are not implemented",
    "jsd": "JSD loss is not implemented",
    "split_bn": "split BatchNorm is not implemented",
    "dist_bn": "BN statistics are identical on all ranks only through training; dist_bn is not implemented",
    "lr_noise": "learning-rate noise is not implemented",
    "epoch_repeats": "epoch repeats are not implemented",
    "use_multi_epochs_loader": "a normal DataLoader is used",
    "torchscript": "TorchScript is not used",
    "tta": "test-time augmentation is not implemented",
    "save_images": "not implemented",
    "log_wandb": "wandb is not supported (TensorBoard and metrics.csv are written)",
    "bn_tf": "TF BatchNorm defaults are not implemented",
    "drop_connect": "no drop-connect in the SDT",
    "drop_block": "no DropBlock in the SDT",
    "gp": "global pooling is fixed (token mean)",
    "input_size": "use img_size / in_channels",
    "checkpoint_hist": "only best.pt and last.pt are kept",
}
# Keys the official files carry that need no warning (bookkeeping) and are otherwise ignored.
IGNORED_QUIETLY = {"local_rank", "experiment_name", "train_split_path", "lr_noise_pct", "lr_noise_std",
                   "resplit", "output_dir", "config", "spikedriven_resolved"}


class Recipe(dict):
    """Resolved settings (attribute access), the set of keys set explicitly, and any warnings."""

    def __init__(self, *a, explicit=(), warnings_=(), source=None, **kw):
        super().__init__(*a, **kw)
        self.__dict__["explicit"] = set(explicit)
        self.__dict__["warnings"] = list(warnings_)
        self.__dict__["source"] = source

    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self[k] = v

    def __deepcopy__(self, memo):
        return Recipe(copy.deepcopy(dict(self), memo), explicit=self.explicit, warnings_=self.warnings,
                      source=self.source)

    # -------------------------------------------------------------- derived
    @property
    def dataset_name(self) -> str:
        return canonical_name(self["dataset"])

    @property
    def data_label(self) -> str:
        """How the data is named in messages: the dataset, or for your own images the folder's name."""
        if DATASET_INFO.get(self.dataset_name, {}).get("folder"):
            from ..data.folder import folder_label

            return folder_label(self.get("data_dir"))
        return self.dataset_name

    def resolved_dict(self, drop=()) -> dict:
        """The recipe's values as a plain dict that ``resolve_recipe`` reads back unchanged and without the
        official no-op warnings (private ``_`` keys and ``drop`` left out, marked ``spikedriven_resolved``).
        Model keys the recipe did not set are left out too: the named model decides them, as it did here."""
        d = {k: v for k, v in self.items() if not str(k).startswith("_") and k not in drop
             and (k not in MODEL_KEYS or k in self.explicit or self.get("model") in (None, "", "sdt"))}
        d["spikedriven_resolved"] = True
        return d

    def adopt_model(self, model) -> "Recipe":
        """Keys the recipe left to the model take the model's values: its T frames event data, its ``tet`` flag
        chooses the loss, its input size and channels shape the data pipeline."""
        for key, attr in (("time_steps", "T"), ("TET", "tet"), ("img_size", "img_size"), ("in_channels", "in_channels")):
            if key not in self.explicit and hasattr(model, attr):
                self[key] = getattr(model, attr)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False)


def recipe_of_run(recipe: dict, overrides: dict | None = None) -> Recipe:
    """The recipe a checkpoint of ``spikedriven train`` stores, with ``overrides`` applied. Run-control keys of the
    invocation that wrote it (resume, stop_after_steps, start_epoch) are not inherited, nor is its folder (output,
    experiment): a resumed run continues in the folder it is resumed from unless ``overrides`` name another."""
    explicit = recipe.get("_explicit", ())  # model keys the run set itself (a registered model decided the rest)
    base = Recipe(recipe, explicit=explicit if isinstance(explicit, (list, tuple)) else ()).resolved_dict(
        drop=("resume", "stop_after_steps", "start_epoch", "output", "experiment"))
    return resolve_recipe(base, dict(overrides or {}), warn=False)


def list_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yml"))


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A YAML path, or the name of one of our recipes (``digits``, ``cifar10_2_512``...)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / f"{name_or_path}.yml", CONFIG_DIR / str(name_or_path)):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor one of our recipes "
                            f"({', '.join(list_configs())})")


def _bad(key: str, value: Any, why: str = "") -> ValueError:
    opt = f" (--{key.replace('_', '-')})" if key in SCHEMA else ""
    rule = SCHEMA[key][3] if key in SCHEMA else None
    close = ""
    if isinstance(value, str) and rule is not None and getattr(rule, "names", None):  # a typo of a name
        close = did_you_mean(value, rule.names() or ())
    return ValueError(f"recipe key {key!r}{opt}: {value!r} is not allowed{why}; it must be {allowed_text(key)}"
                      f"{close}")


def _known_keys(official: bool = True) -> set:
    keys = set(SCHEMA) | set(ALIASES)
    return keys | set(UNSUPPORTED) | IGNORED_QUIETLY | _OFFICIAL_EXTRA_DESTS if official else keys


def _coerce(key: str, value: Any) -> Any:
    """``value`` read as key's type and checked against its allowed values (ValueError naming key, value and what
    is allowed)."""
    if key not in SCHEMA:
        return value
    typ = SCHEMA[key][1]
    if value is None:
        if typ.startswith("opt_"):
            return None
        raise _bad(key, value)
    t = typ.replace("opt_", "")
    if key == "pooling_stat" and not isinstance(value, str):  # unquoted 0011 is the YAML 1.1 octal integer 9
        raise ValueError(f"pooling_stat must be a quoted 4-character string such as \"0011\", got {value!r} "
                         f"(YAML reads unquoted digits as a number)")
    if t == "int":
        if isinstance(value, bool):
            raise _bad(key, value)
        if isinstance(value, float):
            if not (math.isfinite(value) and value == int(value)):
                raise _bad(key, value, " (not a whole number)")
            value = int(value)
        elif isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise _bad(key, value) from None
        elif not isinstance(value, int):
            raise _bad(key, value)
    elif t == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _bad(key, value)
        try:
            value = float(value)
        except ValueError:
            raise _bad(key, value) from None
    elif t == "bool":
        if isinstance(value, str):
            v = value.strip().lower()
            if v in ("1", "true", "yes", "on"):
                value = True
            elif v in ("0", "false", "no", "off", ""):
                value = False
            else:
                raise _bad(key, value)
        elif isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            value = bool(value)
        else:
            raise _bad(key, value)
    elif t == "floats":
        items = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, (list, tuple)):
            raise _bad(key, value)
        if any(isinstance(v, bool) or not isinstance(v, (int, float, str)) for v in items):
            raise _bad(key, value)
        try:
            value = [float(v) for v in items]
        except ValueError:
            raise _bad(key, value) from None
        if any(not math.isfinite(v) for v in value):
            raise _bad(key, value)
    elif t == "ints":
        items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(items, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in items):
            raise _bad(key, value)
        value = [int(v) for v in items]
    elif t == "strs":
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (str, int))
                                                       for v in value):
            raise _bad(key, value)
        value = [str(v) for v in value]
    elif t == "str":
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _bad(key, value)
        value = str(value)
    rule = SCHEMA[key][3]
    if rule is not None and not rule.ok(value):
        raise _bad(key, value)
    return value


def check_value(key: str, value: Any) -> Any:
    """``value`` for recipe key ``key``, converted and checked as :func:`resolve_recipe` does (for values that
    enter elsewhere, e.g. ``spikedriven eval --batch-size``)."""
    return _coerce(ALIASES.get(key, key), value)


def resolve_recipe(config: str | os.PathLike | dict | None = None, overrides: dict[str, Any] | None = None,
                   warn: bool = True, fill_dataset: bool = True) -> Recipe:
    """Defaults <- YAML (path, recipe name or dict) <- overrides; returns a :class:`Recipe`.

    Hyphenated and no-op official keys give a :class:`spikedriven.config.ConfigWarning` (once each).
    """
    msgs: list[str] = []
    if config is None:
        raw, source = {}, None
    elif isinstance(config, dict):
        raw, source = dict(config), "<dict>"
    else:
        path = find_config(config)
        raw, source = load_yaml(path), str(path)
    if not raw.get("spikedriven_resolved"):  # a run's own config.yaml: no official no-op warnings again
        msgs += official_noop_warnings(raw)
    values = {k: copy.deepcopy(v[0]) for k, v in SCHEMA.items()}
    explicit = set()
    for k, v in raw.items():
        k = str(k)
        if "-" in k or k.startswith("_"):
            continue  # official semantics: no effect (warned above)
        k = ALIASES.get(k, k)
        if k in SCHEMA:
            values[k] = _coerce(k, v)
            explicit.add(k)
        elif k in UNSUPPORTED:
            if v not in (None, False, 0, 0.0, "", [], "none"):
                msgs.append(f"key {k!r}={v!r} is not supported here: {UNSUPPORTED[k]}")
        elif k not in IGNORED_QUIETLY and k not in _OFFICIAL_EXTRA_DESTS:
            if isinstance(config, dict):  # training args stored in a checkpoint: not the user's file
                msgs.append(f"unknown key {k!r} ignored (not an official train.py option nor a spikedriven one)")
                continue
            raise ValueError(f"{source}: unknown key {k!r}{did_you_mean(k, _known_keys())} (neither an official "
                             f"train.py option nor a spikedriven one; `spikedriven train --help` lists them)")
    given = set()
    for k, v in (overrides or {}).items():
        k = ALIASES.get(k, k)
        if k not in SCHEMA:
            raise KeyError(f"unknown recipe key {k!r}{did_you_mean(k, _known_keys(official=False))} "
                           f"(`spikedriven train --help` lists them)")
        values[k] = _coerce(k, v)
        explicit.add(k)
        given.add(k)
    if values.get("recovery_interval") and not values.get("checkpoint_every"):
        values["checkpoint_every"] = values["recovery_interval"]
    if values.get("drop"):
        msgs.append(f"drop={values['drop']} has no effect: the SDT has no dropout layer (official behaviour)")
    if values.get("pretrained"):
        msgs.append("pretrained=True has no effect (no weights are downloaded); use initial_checkpoint")
    r = Recipe(values, explicit=explicit, warnings_=msgs, source=source)
    r["dataset"] = canonical_name(r["dataset"]) if r["dataset"] else ""
    if fill_dataset and r["dataset"]:
        _fill_from_dataset(r, given)
    refuse_unusable(r, given)
    if warn:
        for m in msgs:
            warnings.warn(f"{source or 'recipe'}: {m}", ConfigWarning, stacklevel=2)
    return r


def _fill_from_dataset(r: Recipe, given=()) -> None:
    """Unset ``num_classes``, ``in_channels``, ``img_size``, ``mean``, ``std``: from the registered model the recipe
    names (its input size, channels and classes), else from the dataset's ``DATASET_INFO`` entry."""
    info = DATASET_INFO.get(r["dataset"])
    if info is None:
        raise KeyError(f"unknown dataset {r['dataset']!r}; known: {', '.join(sorted(DATASET_INFO))}")
    if info.get("folder"):
        fill_from_folder(r, given)
    model_kw = {}
    if r.get("model") not in (None, "", "sdt"):
        from ..models.registry import is_registered, model_info

        if is_registered(r["model"]):
            model_kw = model_info(r["model"]).kwargs
    defaults = {"num_classes": 1000, "in_channels": 3, "img_size": 224}
    for k in ("num_classes", "in_channels", "img_size", "mean", "std"):
        if r.get(k) is None:
            v = model_kw.get(k, info.get(k))
            r[k] = v if v is not None else defaults.get(k)
    for k in ("mean", "std"):
        if r.get(k) is not None:
            r[k] = [float(x) for x in r[k]]
            if len(r[k]) not in (1, int(r["in_channels"])):
                raise ValueError(f"recipe key {k!r}: {r[k]} has {len(r[k])} values for {r['in_channels']} input "
                                 f"channels; it must have 1 or in_channels values")
    r["_is_event"] = is_event(r["dataset"])


# Remaining official argparse dests (accepted in YAML; no effect unless listed in SCHEMA/UNSUPPORTED).
_OFFICIAL_EXTRA_DESTS = {
    "no_prefetcher", "pin_mem", "log_interval", "checkpoint_hist", "eval_metric", "output", "experiment",
    "patch_size", "use_conv_as_linear", "init_alif", "bn_eps", "bn_momentum", "aug_repeats", "model_ema_force_cpu",
}
