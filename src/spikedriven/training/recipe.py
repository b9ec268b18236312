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
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..config.official import ConfigWarning, load_yaml, official_noop_warnings
from ..data.info import DATASET_ALIASES, DATASET_INFO, canonical_name, is_event

__all__ = ["Recipe", "SCHEMA", "ALIASES", "MODEL_KEYS", "DEFAULT_CONFIG", "recipe_of_run", "resolve_recipe", "find_config", "list_configs", "DATASET_ALIASES",
           "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "digits"  # the main job: what `spikedriven train` runs with no arguments

# key: (default, type, help). Types: int float str bool floats (list) opt_* (None allowed) any (YAML value).
# Defaults are the official train.py argparse defaults where the key exists there.
SCHEMA: dict[str, tuple[Any, str, str]] = {
    # ---- data
    "dataset": ("", "str", "dataset name (spikedriven.data: digits, fashion-mnist, cifar10, cifar100, imagenet, "
                "gesture, cifar10-dvs, cifar10-dvs-tet, sim-fashion-mnist-dvs; official 'torch/cifar10' accepted)"),
    "data_dir": ("", "str", "dataset root (empty: the data module's default location)"),
    "train_split": ("train", "str", "training split"),
    "val_split": ("validation", "str", "evaluation split (validation/val/test all mean the held-out split)"),
    "img_size": (None, "opt_int", "input side in pixels (default: the dataset's)"),
    "in_channels": (None, "opt_int", "input channels (default: the dataset's)"),
    "num_classes": (None, "opt_int", "classes (default: the dataset's)"),
    "mean": (None, "opt_floats", "normalisation mean (default: the dataset's)"),
    "std": (None, "opt_floats", "normalisation std (default: the dataset's)"),
    "crop_pct": (None, "opt_float", "eval Resize(img/crop_pct) then CenterCrop(img) (default 1.0 for small "
                 "images, 0.875 timm default otherwise)"),
    "interpolation": ("", "str", "eval interpolation (bicubic, bilinear, ...; empty = bilinear)"),
    "train_interpolation": ("random", "str", "train RandomResizedCrop interpolation"),
    "scale": ([0.08, 1.0], "floats", "RandomResizedCrop scale range"),
    "ratio": ([3 / 4, 4 / 3], "floats", "RandomResizedCrop aspect-ratio range"),
    "hflip": (0.5, "float", "horizontal flip probability"),
    "vflip": (0.0, "float", "vertical flip probability"),
    "color_jitter": (0.4, "float", "colour jitter (inactive when aa is set, as in timm 0.6.12)"),
    "aa": (None, "opt_str", "auto-augment policy, e.g. rand-m9-n1-mstd0.4-inc1 (RandAugment)"),
    "no_aug": (False, "bool", "disable all training augmentation"),
    "reprob": (0.0, "float", "random erasing probability"),
    "remode": ("const", "str", "random erasing mode"),
    "recount": (1, "int", "random erasing count"),
    "mixup": (0.0, "float", "mixup alpha (0 = off)"),
    "cutmix": (0.0, "float", "cutmix alpha (0 = off)"),
    "cutmix_minmax": (None, "opt_floats", "cutmix min/max ratio (overrides alpha)"),
    "mixup_prob": (1.0, "float", "probability of applying mixup or cutmix per batch"),
    "mixup_switch_prob": (0.5, "float", "probability of cutmix instead of mixup when both are on"),
    "mixup_mode": ("batch", "str", "batch | pair | elem"),
    "mixup_off_epoch": (0, "int", "turn mixup off from this epoch on (0 = never)"),
    "smoothing": (0.1, "float", "label smoothing"),
    "bce_loss": (False, "bool", "binary cross-entropy on (mixed) targets instead of soft-target CE"),
    "bce_target_thresh": (None, "opt_float", "binarise BCE targets at this threshold"),
    "dvs_aug": (False, "bool", "event data: Cutout (1 hole, 16 px) on the whole batch (official --dvs-aug)"),
    "dvs_trival_aug": (False, "bool", "event data: per-sample SNNAugmentWide (official --dvs-trival-aug)"),
    "batch_size": (32, "int", "training batch per process"),
    "val_batch_size": (16, "int", "evaluation batch per process"),
    "workers": (4, "int", "DataLoader worker processes (0 = load in the main process)"),
    "pin_mem": (False, "bool", "pin host memory (CUDA)"),
    "max_train_samples": (None, "opt_int", "use a fixed random subset of N training samples (quick runs)"),
    "max_eval_samples": (None, "opt_int", "use a fixed random subset of N evaluation samples (quick runs)"),
    # ---- model (official key names: dim, layer, time_steps)
    "model": ("sdt", "str", "'sdt' (build from dim/layer/... keys) or a registered name (spikedriven models)"),
    "dim": (None, "opt_int", "embedding dimension D"),
    "layer": (4, "int", "encoder blocks L"),
    "time_steps": (4, "int", "time steps T"),
    "num_heads": (8, "int", "attention heads"),
    "mlp_ratio": (4.0, "float", "MLP expansion"),
    "pooling_stat": ("1111", "str", "stem max-pool switches, 4 chars of 0/1 (quote it in YAML)"),
    "spike_mode": ("lif", "str", "lif | plif"),
    "TET": (False, "bool", "TET loss on per-step logits (a real boolean flag: --TET / --no-TET)"),
    "TET_means": (1.0, "float", "TET MSE target"),
    "TET_lamb": (0.0, "float", "TET MSE weight lambda"),
    "drop_path": (0.2, "float", "official key: a no-op there (DropPath never called); see drop_path_rate"),
    "drop_path_rate": (0.0, "float", "stochastic depth actually applied (ours; 0 = the official behaviour)"),
    "drop": (0.0, "float", "dropout rate (the SDT has no dropout layer: must stay 0)"),
    "dvs_mode": (None, "opt_bool", "Erode on K/V (default: dataset is cifar10-dvs or cifar10-dvs-tet)"),
    "attn_mode": ("sdsa", "str", "attention variant (ablations): sdsa | sdsa_v1 | ssa | softmax"),
    "shortcut": ("ms", "str", "shortcut variant (ablations): ms | sew | none"),
    "lif_backend": (None, "opt_str", "neuron implementation: auto | torch | cpp | triton (default: env/auto)"),
    "embed_dims": (None, "opt_ints", "V2 stage widths D0 D1 D2 D3 (sdt_v2 models; default: the model's)"),
    "downsample_strides": (None, "opt_ints", "V2 strides of the 5 downsampling layers (official 2 2 2 2 1)"),
    "kd": (None, "opt_bool", "V2 distillation head head_kd (default: the model's)"),
    "pretrained": (False, "bool", "official key; no pretrained download here (use initial_checkpoint)"),
    "initial_checkpoint": ("", "str", "start from these weights (ours: honoured; official: parsed but unused)"),
    "linear_prob": (False, "bool", "freeze patch_embed (official --linear-prob)"),
    # ---- optimisation
    "opt": ("sgd", "str", "optimizer (timm create_optimizer_v2 names: adamw, lamb, sgd, ...)"),
    "opt_eps": (None, "opt_float", "optimizer epsilon"),
    "opt_betas": (None, "opt_floats", "optimizer betas"),
    "momentum": (0.9, "float", "SGD momentum"),
    "weight_decay": (1e-4, "float", "weight decay (not applied to biases and 1-D parameters)"),
    "clip_grad": (None, "opt_float", "gradient clipping threshold (None = off)"),
    "clip_mode": ("norm", "str", "norm | value | agc"),
    "sched": ("step", "str", "learning-rate schedule (timm: cosine, step, multistep, tanh, poly, plateau, none)"),
    "sched_on_updates": (False, "bool", "step the schedule every iteration (ours) instead of once per epoch"),
    "lr": (0.01, "float", "peak learning rate (not rescaled by the world size, as official)"),
    "lr_cycle_mul": (1.0, "float", "cosine cycle length multiplier"),
    "lr_cycle_limit": (1, "int", "cosine cycles"),
    "warmup_lr": (1e-4, "float", "learning rate at the start of warm-up"),
    "min_lr": (1e-5, "float", "cosine floor"),
    "epochs": (200, "int", "schedule length; epochs run = epochs + cooldown_epochs"),
    "cooldown_epochs": (10, "int", "epochs at min_lr after the schedule"),
    "warmup_epochs": (3, "int", "warm-up epochs (overlapping the cosine, warmup_prefix=False, as official)"),
    "decay_epochs": (30, "float", "step schedule period"),
    "decay_rate": (0.1, "float", "step schedule factor"),
    "patience_epochs": (10, "int", "plateau schedule patience"),
    "start_epoch": (None, "opt_int", "override the start epoch (also after --resume)"),
    # ---- EMA, precision, distributed
    "model_ema": (False, "bool", "keep an EMA of the weights (timm ModelEmaV3); it is evaluated and ranks "
                  "checkpoints"),
    "model_ema_decay": (0.9998, "float", "EMA decay"),
    "model_ema_force_cpu": (False, "bool", "keep the EMA on the CPU"),
    "amp": (False, "bool", "mixed precision: CUDA fp16 (GradScaler) / bf16, CPU bf16 autocast"),
    "amp_dtype": ("auto", "str", "auto (CUDA float16, CPU bfloat16) | float16 | bfloat16"),
    "channels_last": (False, "bool", "official memory-format switch; spikedriven chooses its layout itself"),
    "sync_bn": (False, "bool", "SyncBatchNorm under DDP (CUDA only; ignored with a warning on CPU)"),
    "find_unused_parameters": (False, "bool", "DDP find_unused_parameters (not needed: the unused "
                               "talking_heads weight is frozen instead)"),
    "dist_backend": ("auto", "str", "auto (nccl on CUDA, gloo on CPU) | nccl | gloo"),
    "device": ("auto", "str", "auto | cpu | cuda | cuda:N"),
    "threads": (None, "opt_int", "torch CPU threads per process"),
    # ---- run control, output
    "seed": (42, "int", "random seed (rank-dependent, as timm random_seed(seed, rank))"),
    "deterministic": (False, "bool", "torch.use_deterministic_algorithms (bit-exact resume on CPU holds anyway)"),
    "output": ("runs", "str", "parent folder of run folders"),
    "experiment": ("", "str", "run folder name (default <timestamp>-<dataset>-<model>)"),
    "resume": ("", "str", "checkpoint (last.pt) or run folder to continue exactly"),
    "no_resume_opt": (False, "bool", "on resume, load only the weights"),
    "eval_metric": ("top1", "str", "top1 | top5 | loss: ranks best.pt"),
    "log_interval": (50, "int", "log every N steps (TensorBoard, log file)"),
    "checkpoint_every": (0, "int", "also write last.pt every N steps inside an epoch (0 = epoch ends only)"),
    "recovery_interval": (0, "int", "official name for checkpoint_every"),
    "eval_every": (1, "int", "evaluate every N epochs (and always after the last)"),
    "stop_after_steps": (None, "opt_int", "stop (with last.pt) after this many steps, e.g. to test resume"),
    "time_limit": (None, "opt_float", "minutes of training: stop there (mid-epoch if need be), evaluate and save"),
    "progress": (True, "bool", "progress bar"),
    "tensorboard": (True, "bool", "write TensorBoard logs under tb/"),
    "plot": (True, "bool", "write curve.png"),
    "summary": (True, "bool", "print a firing-rate / energy summary of the trained model"),
    "save_safetensors": (True, "bool", "also write best.safetensors"),
    "save_checkpoints": (True, "bool", "write last.pt / best.pt"),
}

# Keys that describe only the model (the rest of the recipe is data and optimisation). With a registered model
# name they override its configuration only when set explicitly.
MODEL_KEYS = {"dim", "layer", "time_steps", "num_heads", "mlp_ratio", "pooling_stat", "spike_mode", "TET",
              "drop_path_rate", "attn_mode", "shortcut", "dvs_mode", "lif_backend", "embed_dims", "downsample_strides",
              "kd"}

ALIASES = {"b": "batch_size", "vb": "val_batch_size", "j": "workers", "tet": "TET", "tet_means": "TET_means",
           "tet_lamb": "TET_lamb", "T": "time_steps", "embed_dim": "dim", "depth": "layer"}


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
    invocation that wrote it (resume, stop_after_steps, start_epoch) are not inherited."""
    base = Recipe(recipe).resolved_dict(drop=("resume", "stop_after_steps", "start_epoch"))
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


def _coerce(key: str, value: Any) -> Any:
    if key not in SCHEMA or value is None:
        return value
    typ = SCHEMA[key][1].replace("opt_", "")
    if key == "pooling_stat" and not isinstance(value, str):  # unquoted 0011 is the YAML 1.1 octal integer 9
        raise ValueError(f"pooling_stat must be a quoted 4-character string such as \"0011\", got {value!r} "
                         f"(YAML reads unquoted digits as a number)")
    try:
        if typ == "int":
            return int(value)
        if typ == "float":
            return float(value)
        if typ == "bool":
            if isinstance(value, str):
                v = value.strip().lower()
                if v in ("1", "true", "yes", "on"):
                    return True
                if v in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ == "ints":
            if isinstance(value, (int, float)):
                return [int(value)]
            return [int(v) for v in value]
        if typ == "floats":
            if isinstance(value, (int, float)):
                return [float(value)]
            return [float(v) for v in value]
        if typ == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"recipe key {key!r}: cannot read {value!r} as {typ}") from None
    return value


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
            msgs.append(f"unknown key {k!r} ignored (not an official train.py option nor a spikedriven one)")
    for k, v in (overrides or {}).items():
        k = ALIASES.get(k, k)
        if k not in SCHEMA:
            raise KeyError(f"unknown recipe key {k!r}; valid keys: {', '.join(sorted(SCHEMA))}")
        values[k] = _coerce(k, v)
        explicit.add(k)
    if values.get("recovery_interval") and not values.get("checkpoint_every"):
        values["checkpoint_every"] = values["recovery_interval"]
    if values.get("drop"):
        msgs.append(f"drop={values['drop']} has no effect: the SDT has no dropout layer (official behaviour)")
    if values.get("pretrained"):
        msgs.append("pretrained=True has no effect (no weights are downloaded); use initial_checkpoint")
    r = Recipe(values, explicit=explicit, warnings_=msgs, source=source)
    r["dataset"] = canonical_name(r["dataset"]) if r["dataset"] else ""
    if fill_dataset and r["dataset"]:
        _fill_from_dataset(r)
    if warn:
        for m in msgs:
            warnings.warn(f"{source or 'recipe'}: {m}", ConfigWarning, stacklevel=2)
    return r


def _fill_from_dataset(r: Recipe) -> None:
    """Unset ``num_classes``, ``in_channels``, ``img_size``, ``mean``, ``std``: from the registered model the recipe
    names (its input size, channels and classes), else from the dataset's ``DATASET_INFO`` entry."""
    info = DATASET_INFO.get(r["dataset"])
    if info is None:
        raise KeyError(f"unknown dataset {r['dataset']!r}; known: {', '.join(sorted(DATASET_INFO))}")
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
    r["_is_event"] = is_event(r["dataset"])


# Remaining official argparse dests (accepted in YAML; no effect unless listed in SCHEMA/UNSUPPORTED).
_OFFICIAL_EXTRA_DESTS = {
    "no_prefetcher", "pin_mem", "log_interval", "checkpoint_hist", "eval_metric", "output", "experiment",
    "patch_size", "use_conv_as_linear", "init_alif", "bn_eps", "bn_momentum", "aug_repeats", "model_ema_force_cpu",
}
