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

import argparse
import copy
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigWarning, load_yaml, model_kwargs_from_official, official_noop_warnings
from ..data import DATASET_ALIASES, canonical_name

__all__ = ["Recipe", "SCHEMA", "resolve_recipe", "find_config", "list_configs", "add_recipe_arguments",
           "recipe_overrides_from_args", "DATASET_ALIASES", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

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
        return normalise_dataset(self["dataset"])

    def model_kwargs(self) -> dict[str, Any]:
        """``SpikeDrivenTransformer`` keyword arguments for this recipe."""
        from ..model import _REGISTRY

        name = self.get("model") or "sdt"
        explicit = self.explicit
        if name != "sdt":
            if name not in _REGISTRY:
                from ..model import model_info

                model_info(name)  # raises with suggestions
            kw = copy.deepcopy(_REGISTRY[name].kwargs)
            mapping = {"dim": "embed_dim", "layer": "depth", "time_steps": "T", "num_heads": "num_heads",
                       "mlp_ratio": "mlp_ratio", "pooling_stat": "pooling_stat", "spike_mode": "spike_mode",
                       "TET": "tet", "img_size": "img_size", "in_channels": "in_channels",
                       "num_classes": "num_classes"}
            for k, mk in mapping.items():
                if k in explicit and self.get(k) is not None:
                    kw[mk] = self[k]
        else:
            if self.get("dim") is None:
                raise ValueError("the recipe builds the model from its keys but sets no 'dim' (embedding "
                                 "dimension); set dim (and layer, time_steps, ...) or model: <registered name>")
            cfg = {k: v for k, v in self.items() if v is not None}
            kw = model_kwargs_from_official(cfg)
        kw["drop_path_rate"] = float(self.get("drop_path_rate") or 0.0)
        kw["attn_mode"] = self.get("attn_mode") or "sdsa"
        kw["shortcut"] = self.get("shortcut") or "ms"
        if self.get("dvs_mode") is not None:
            kw["dvs_mode"] = bool(self["dvs_mode"])
        elif name == "sdt":
            kw["dvs_mode"] = self.dataset_name in ("cifar10-dvs", "cifar10-dvs-tet")
        if self.get("lif_backend"):
            kw["lif_backend"] = self["lif_backend"]
        return kw

    def resolved_dict(self, drop=()) -> dict:
        """The recipe's values as a plain dict that ``resolve_recipe`` reads back unchanged and without the
        official no-op warnings (private ``_`` keys and ``drop`` left out, marked ``spikedriven_resolved``)."""
        d = {k: v for k, v in self.items() if not str(k).startswith("_") and k not in drop}
        d["spikedriven_resolved"] = True
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved_dict(), sort_keys=False)


def normalise_dataset(name: str) -> str:
    return canonical_name(name)


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
    r["dataset"] = normalise_dataset(r["dataset"]) if r["dataset"] else ""
    if fill_dataset and r["dataset"]:
        _fill_from_dataset(r)
    if warn:
        for m in msgs:
            warnings.warn(f"{source or 'recipe'}: {m}", ConfigWarning, stacklevel=2)
    return r


def _fill_from_dataset(r: Recipe) -> None:
    try:
        from ..data import DATASET_INFO
    except ImportError:  # data subpackage not installed: leave official defaults
        DATASET_INFO = {}
    info = DATASET_INFO.get(r["dataset"])
    if info is None and DATASET_INFO:
        raise KeyError(f"unknown dataset {r['dataset']!r}; known: {', '.join(sorted(DATASET_INFO))}")

    def get(attr):
        if info is None:
            return None
        return info.get(attr) if isinstance(info, dict) else getattr(info, attr, None)

    size = get("img_size") or get("image_size") or get("size")
    if isinstance(size, (tuple, list)):
        size = size[-1]
    fills = {"num_classes": get("num_classes"), "in_channels": get("in_channels"), "img_size": size,
             "mean": get("mean"), "std": get("std")}
    defaults = {"num_classes": 1000, "in_channels": 3, "img_size": 224}
    for k, v in fills.items():
        if r.get(k) is None:
            r[k] = v if v is not None else defaults.get(k)
    for k in ("mean", "std"):
        if r.get(k) is not None:
            r[k] = [float(x) for x in r[k]]
    r["_is_event"] = bool(get("is_event")) if info is not None else r["dataset"] in (
        "gesture", "cifar10-dvs", "cifar10-dvs-tet", "sim-fashion-mnist-dvs")


# Remaining official argparse dests (accepted in YAML; no effect unless listed in SCHEMA/UNSUPPORTED).
_OFFICIAL_EXTRA_DESTS = {
    "no_prefetcher", "pin_mem", "log_interval", "checkpoint_hist", "eval_metric", "output", "experiment",
    "patch_size", "use_conv_as_linear", "init_alif", "bn_eps", "bn_momentum", "aug_repeats", "model_ema_force_cpu",
}


# ------------------------------------------------------------------------------------------- CLI
def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """One option per recipe key (``--warmup-epochs`` and ``--warmup_epochs``); all default to "unset"."""
    g = p.add_argument_group("recipe settings (override the YAML; defaults are the official train.py ones)")
    short = {"batch_size": ["-b"], "val_batch_size": ["-vb"], "workers": ["-j"]}
    extra = {"TET": ["--tet"], "time_steps": ["--T"], "dim": ["--embed-dim"], "layer": ["--depth"]}
    for key, (default, typ, help_) in SCHEMA.items():
        names = short.get(key, []) + [f"--{key.replace('_', '-')}"]
        if "_" in key:
            names.append(f"--{key}")
        names += extra.get(key, [])
        t = typ.replace("opt_", "")
        shown = f" [default: {default}]"
        if t == "bool":
            g.add_argument(*names, dest=f"r_{key}", action=argparse.BooleanOptionalAction, default=None,
                           help=help_ + shown)
        elif t == "floats":
            g.add_argument(*names, dest=f"r_{key}", type=float, nargs="+", default=None, help=help_ + shown,
                           metavar="X")
        else:
            conv = {"int": int, "float": float, "str": str}.get(t, str)
            g.add_argument(*names, dest=f"r_{key}", type=conv, default=None, help=help_ + shown,
                           metavar=key.upper() if len(key) < 14 else "V")
    g.add_argument("--set", dest="r__set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any recipe key (value parsed as YAML), e.g. --set scale='[0.5, 1.0]'")


def recipe_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        if k.startswith("r_") and k != "r__set" and v is not None:
            out[k[2:]] = v
    for item in getattr(args, "r__set", []) or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out
