"""Recipe checks that speak to the user: names they mistyped, settings the chosen recipe cannot use, and the
settings an image folder decides (``--dataset imagefolder``).

Kept apart from ``recipe.py`` (the schema and its resolution), which calls these three functions.
"""
from __future__ import annotations

import difflib

__all__ = ["did_you_mean", "refuse_unusable", "fill_from_folder", "IMAGE_TRANSFORM_KEYS"]


# what other tools call a key (too far from ours for a spelling match)
SYNONYMS = {"learning_rate": "lr", "learningrate": "lr", "optimizer": "opt", "optim": "opt", "scheduler": "sched",
            "lr_scheduler": "sched", "schedule": "sched", "wd": "weight_decay", "num_epochs": "epochs",
            "n_epochs": "epochs", "max_epochs": "epochs", "warmup": "warmup_epochs", "bs": "batch_size",
            "batch": "batch_size", "data": "dataset", "data_path": "data_dir", "data_root": "data_dir",
            "root": "data_dir", "timesteps": "time_steps", "timestep": "time_steps", "steps": "time_steps",
            "n_classes": "num_classes", "nb_classes": "num_classes", "classes": "class_names",
            "image_size": "img_size", "input_size": "img_size", "channels": "in_channels", "ema": "model_ema",
            "label_smoothing": "smoothing", "dropout": "drop", "embed_dim": "dim", "heads": "num_heads"}


def did_you_mean(word: str, names) -> str:
    """``"; did you mean a, b?"`` with the closest of ``names`` (spelling, case, or another tool's name for it),
    or ``""``."""
    names = sorted({str(n) for n in names})
    lower = {n.lower(): n for n in names}
    w = str(word).strip().lower().replace("-", "_")
    close = [lower[c] for c in difflib.get_close_matches(w, list(lower), n=3, cutoff=0.6)]
    syn = SYNONYMS.get(w)
    if syn in names and syn not in close:
        close.insert(0, syn)
    return f"; did you mean {', '.join(close[:3])}?" if close else ""


# ------------------------------------------------------------------------------------------- unusable flags
IMAGE_TRANSFORM_KEYS = ("crop_pct", "interpolation", "train_interpolation", "scale", "ratio", "hflip", "vflip",
                        "color_jitter", "aa", "reprob", "remode", "recount", "mean", "std")
_SCHED_KEYS = ("warmup_epochs", "warmup_lr", "min_lr", "cooldown_epochs")


def _sched(r) -> str:
    return str(r.get("sched") or "none").lower()


def _embedded(r):
    from ..data.info import is_embedded

    if is_embedded(r.get("dataset") or ""):
        return f"{r['dataset']} is embedded in the package, no folder is read"
    return None


# (keys, why they cannot act in recipe r, or None). Only flags the user gave are checked: a recipe file may set
# keys for other runs of it.
_RULES = [
    (("data_dir",), _embedded),
    (("dvs_aug", "dvs_trival_aug"), lambda r: r.get("dataset") and not r.get("_is_event")
     and f"it augments event frames and {r['dataset']} is a static image dataset"),
    (IMAGE_TRANSFORM_KEYS, lambda r: r.get("_is_event")
     and f"{r['dataset']} is event data (frames are resized only; image transforms and normalisation do not apply)"),
    (("partial",), lambda r: not (r.get("initial_checkpoint") or r.get("resume"))
     and "it applies to the weights of --init-from or --resume, and neither is given"),
    (("no_resume_opt",), lambda r: not r.get("resume") and "it applies to --resume, which is not given"),
    (("model_ema_decay", "model_ema_force_cpu"), lambda r: not r.get("model_ema")
     and "it applies to the EMA of the weights: add --model-ema"),
    (("distillation_alpha", "distillation_tau", "kd_teacher", "kd_teacher_checkpoint"),
     lambda r: (r.get("distillation_type") or "none") == "none"
     and "it applies to distillation: add --distillation-type hard or soft"),
    (("mixup_prob", "mixup_switch_prob", "mixup_mode", "mixup_off_epoch"),
     lambda r: not (r.get("mixup", 0) > 0 or r.get("cutmix", 0) > 0 or r.get("cutmix_minmax"))
     and "mixup and cutmix are off: add --mixup or --cutmix > 0"),
    (("bce_target_thresh",), lambda r: not r.get("bce_loss") and "it applies to --bce-loss, which is off"),
    (("remode", "recount"), lambda r: not r.get("reprob", 0) > 0 and "random erasing is off: add --reprob > 0"),
    (("color_jitter",), lambda r: r.get("aa") not in (None, "", "none")
     and "colour jitter is inactive when an auto-augment policy (aa) is set"),
    (_SCHED_KEYS, lambda r: _sched(r) in ("none", "constant", "")
     and f"the schedule is {r.get('sched')!r} (constant lr): choose --sched cosine/step/..."),
    (("decay_epochs",), lambda r: _sched(r) != "step" and f"it applies to --sched step, not {_sched(r)}"),
    (("decay_rate",), lambda r: _sched(r) not in ("step", "multistep", "plateau", "poly")
     and f"it applies to --sched step, multistep, plateau or poly, not {_sched(r)}"),
    (("patience_epochs",), lambda r: _sched(r) != "plateau" and f"it applies to --sched plateau, not {_sched(r)}"),
    (("lr_cycle_mul", "lr_cycle_limit"), lambda r: _sched(r) not in ("cosine", "tanh")
     and f"it applies to --sched cosine or tanh, not {_sched(r)}"),
]


def refuse_unusable(r, given) -> None:
    """ValueError (one line) for the first of the keys ``given`` explicitly (command-line flags, overrides) that
    the resolved recipe ``r`` cannot use: a flag is refused rather than ignored. A boolean flag set to False asks
    for nothing and passes."""
    for keys, why in _RULES:
        for k in keys:
            if k in given and r.get(k) is not False and r.get(k) is not None:
                reason = why(r)
                if reason:
                    raise ValueError(f"--{k.replace('_', '-')} cannot be used here: {reason}; leave it out")


# ------------------------------------------------------------------------------------------- image folders
def fill_from_folder(r, given=()) -> None:
    """Unset data keys of an ``imagefolder`` recipe from the folder (``--data-dir``): ``class_names`` and
    ``num_classes`` from the training sub-folders (the model's head takes them), ``in_channels`` from the images
    (the model takes them), ``img_size`` from the model the recipe names, else the images, and ``mean``/``std``
    computed from the training images. A note saying what was read goes to ``r["_data_note"]``. When the dataset
    was switched to the folder by ``given`` keys (``-c cifar10_2_256 --dataset imagefolder``), what the recipe file
    said about its own dataset (classes, channels, statistics) is dropped first."""
    from ..data.folder import LAYOUT, folder_classes, folder_label, head_refusal, inspect_folder

    root = r.get("data_dir")
    if not root:
        raise ValueError(f"--dataset imagefolder needs --data-dir FOLDER laid out as {LAYOUT}")
    keys = ("class_names", "num_classes", "in_channels", "img_size", "mean", "std")
    if "dataset" in given:
        for k in ("class_names", "num_classes", "in_channels", "mean", "std"):
            if k not in given:
                r[k] = None
                r.explicit.discard(k)
    if all(r.get(k) is not None for k in keys):
        return  # a run's stored recipe: the folder is checked against class_names when it is read
    stats = any(r.get(k) is None for k in ("in_channels", "img_size", "mean", "std"))
    info = inspect_folder(root, channels=r.get("in_channels")) if stats else {"classes": folder_classes(root)}
    classes = info["classes"]
    if r.get("class_names") is not None and list(r["class_names"]) != classes:
        raise ValueError(f"{root}: its classes ({', '.join(classes[:6])}) are not the recipe's class_names "
                         f"({', '.join(list(r['class_names'])[:6])}); leave class_names out to take the folder's")
    if r.get("num_classes") is not None:
        why = head_refusal(int(r["num_classes"]), classes, root, chosen="num_classes" in r.explicit)
        if why:
            raise ValueError(why)
    model_kw = {}
    if r.get("model") not in (None, "", "sdt"):
        from ..models.registry import is_registered, model_info

        if is_registered(r["model"]):
            model_kw = model_info(r["model"]).kwargs
    set_here = []
    for k, v in (("class_names", classes), ("num_classes", len(classes)), ("in_channels", info.get("in_channels")),
                 ("img_size", model_kw.get("img_size", info.get("img_size")))):
        if r.get(k) is None:
            r[k] = v
            set_here.append(k)
    # the model is built for this data: its head and input channels follow the folder (as if given explicitly)
    r.explicit.update(k for k in ("num_classes", "in_channels") if k in set_here)
    computed = []
    for k in ("mean", "std"):
        if r.get(k) is None:
            r[k] = list(info[k])
            computed.append(k)
    label = folder_label(root)
    shown = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
    note = (f"data {label}: {len(classes)} classes ({shown}) from {root}; {r['in_channels']} channel(s) at "
            f"{r['img_size']} px")
    if computed:
        note += (f"; mean {r['mean']} std {r['std']} computed from {info['n_used']} of {info['n_train']} training "
                 f"images (stored in the run's recipe)")
    r["_data_note"] = note
