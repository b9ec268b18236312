"""Inputs for a trained model outside training, prepared exactly as its recipe prepared evaluation data.

Whatever runs a model on data (``spikedriven infer``, ``energy --data``, ``viz --image``) gets its inputs here, so
that they go through the recipe's own evaluation transform (resize, crop, channels, normalisation, event framing
and T). The recipe comes from the checkpoint (``spikedriven train`` stores it), from ``--config``, or from the
registered model's documented recipe; when none of them says how inputs were prepared, these functions refuse
with a message instead of guessing.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..data.info import DATASET_INFO
from .recipe import Recipe, recipe_of_run, resolve_recipe
from .recipe_checks import refuse_unusable

__all__ = ["recipe_for_model", "with_dataset", "dataset_inputs", "image_inputs", "event_inputs", "random_inputs",
           "path_inputs"]


def recipe_for_model(model, meta: dict | None = None, config: str | os.PathLike | None = None) -> tuple[Recipe | None, str]:
    """``(recipe, where it came from)`` that says how ``model``'s inputs are prepared, or ``(None, reason)``.

    Order: ``config`` (a YAML given with the model), the checkpoint's own recipe (``spikedriven train``), the
    official ``args`` of an official checkpoint, the registered model's recipe (``spikedriven models``).
    """
    from ..models.registry import is_registered, model_info

    meta = meta or {}
    if config is not None:
        r, src = resolve_recipe(config, warn=False), f"the config {config}"
    elif isinstance(meta.get("recipe"), dict):
        r, src = recipe_of_run(meta["recipe"]), "the run's recipe (stored in the checkpoint)"
    elif isinstance(meta.get("args"), dict) and meta["args"].get("dataset"):
        args = {k: v for k, v in meta["args"].items() if "-" not in str(k)}
        r, src = resolve_recipe(args, warn=False), "the official training args stored in the checkpoint"
    elif is_registered(getattr(model, "model_name", "")) and model_info(model.model_name).recipe:
        name = model.model_name
        r, src = resolve_recipe(model_info(name).recipe, warn=False), f"the registered recipe of {name}"
    else:
        return None, ("nothing says how this model's inputs were prepared (the checkpoint holds no recipe and the "
                      "model is not a registered one); pass --config RECIPE.yml (or --model NAME whose recipe "
                      "applies), or give inputs already prepared as an .npz of model-ready tensors")
    return r.adopt_model(model), src


def with_dataset(r: Recipe, dataset: str | None = None, data_dir: str | None = None,
                 head: int | None = None) -> Recipe:
    """``r`` with another dataset (its classes, channels and statistics; the model's size, T and the transform
    settings kept), as ``spikedriven eval --data`` does. ``head``: the model's number of outputs, checked against
    the classes of an image folder."""
    if dataset is None or r.dataset_name == dataset:
        out = Recipe(dict(r), explicit=r.explicit, source=r.source)
    else:
        base = {k: v for k, v in r.items() if not str(k).startswith("_")}
        base.update(dataset=dataset, mean=None, std=None, num_classes=None)
        out = resolve_recipe(base, warn=False)
        for k in ("img_size", "in_channels", "time_steps"):
            out[k] = r[k]
    if data_dir:
        out["data_dir"] = data_dir
        refuse_unusable(out, {"data_dir"})
    if head is not None and out.get("class_names") and DATASET_INFO.get(out.dataset_name, {}).get("folder"):
        from ..data.folder import head_refusal

        why = head_refusal(int(head), list(out["class_names"]), out.get("data_dir"))
        if why:
            raise ValueError(why)
    out["max_eval_samples"] = None  # the whole split: callers choose their own subset
    return out


def dataset_inputs(r: Recipe, limit: int | None = None, seed: int = 0, split: str = "test", indices=None):
    """``(x [N, ...] float32 tensor, y [N] int64 tensor, description)``: a dataset's split through the recipe's own
    evaluation pipeline; ``limit``: a fixed random subset of that many samples (in dataset order); ``indices``:
    exactly these samples."""
    from .data import build_datasets

    ds = build_datasets(r, splits=(split,))[split]
    if indices is not None:
        bad = [i for i in indices if not 0 <= int(i) < len(ds)]
        if bad:
            raise IndexError(f"sample {bad[0]} is outside the {r.dataset_name} {split} split (0..{len(ds) - 1})")
        ids = np.asarray(indices, dtype=np.int64)
        n = len(ids)
    else:
        n = len(ds) if not limit else min(int(limit), len(ds))
        ids = np.arange(n) if n == len(ds) else np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    if n == 0:
        raise ValueError(f"{r.dataset_name} {split}: no samples")
    xs, ys = zip(*(ds[int(i)] for i in ids))
    x = torch.stack([torch.as_tensor(np.asarray(v), dtype=torch.float32) for v in xs])
    return x, torch.as_tensor(ys, dtype=torch.int64), f"{r.data_label} {split} ({n} of {len(ds)} samples)"


def image_inputs(r: Recipe, paths) -> tuple[torch.Tensor, str]:
    """Image files (PNG, JPG, ...) through the recipe's evaluation transform; ``(x [N, C, H, W], description)``."""
    from ..data.images import open_rgb
    from .data import build_transforms

    if r.get("_is_event"):
        raise ValueError(f"the model was trained on event data ({r.dataset_name}); give event frames as an .npz, "
                         f"not image files")
    transform = build_transforms(r, is_event=False)[1]
    out = []
    for p in paths:  # bit depth kept, pixel budget, a message naming the file (data/images.py)
        out.append(transform(open_rgb(p)))
    if not out:
        raise ValueError("no image files given")
    return torch.stack(out), f"{len(out)} image(s)"


def event_inputs(path, model, r: Recipe | None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Event frames from an .npz (``frames`` [T, C, H, W] or [B, T, C, H, W], optional ``labels`` [B]): ``(x, y,
    description)``. Frames of the model's size are used as they are; other sizes go through the recipe's event
    resize (refused without a recipe)."""
    from ..bounds import check_numpy_file

    check_numpy_file(path)  # a FIFO, a zip bomb, a header claiming more than the file holds
    try:
        with np.load(path, allow_pickle=False) as z:
            key = "frames" if "frames" in z.files else (z.files[0] if z.files else None)
            x = np.asarray(z[key]) if key else None
            y = np.asarray(z["labels"]) if "labels" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a readable .npz of event frames ({type(e).__name__}: {e})") from None
    if x is None:
        raise ValueError(f"{path}: empty .npz (expected an array 'frames' [T, C, H, W] or [B, T, C, H, W])")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{path}: frames must hold numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5:
        raise ValueError(f"{path}: expected event frames [T, C, H, W] or [B, T, C, H, W], got shape {x.shape}")
    if not np.isfinite(x).all() or (model.in_channels == 2 and (x < 0).any()):
        raise ValueError(f"{path}: frames must be finite" + (" non-negative event counts" if model.in_channels == 2
                                                              else ""))
    B, T, C, H, W = x.shape
    if T != model.T or C != model.in_channels:
        raise ValueError(f"{path}: frames [B={B}, T={T}, C={C}, ...] but the model takes T={model.T} frames of "
                         f"{model.in_channels} channel(s)")
    if y is not None:
        if y.ndim != 1 or len(y) != B or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: 'labels' must hold one integer per sample ({B}), got shape {y.shape} "
                             f"dtype {y.dtype}")
        bad = y[(y < 0) | (y >= model.num_classes)] if hasattr(model, "num_classes") else y[y < 0]
        if bad.size:  # a label no class has would be counted as a wrong prediction
            raise ValueError(f"{path}: label {int(bad[0])} is not a class of the model (0..{model.num_classes - 1})")
        y = torch.as_tensor(y.astype(np.int64))
    xt = torch.from_numpy(x)
    if (H, W) != (model.img_size, model.img_size):
        if r is None:
            raise ValueError(f"{path}: frames are {H}x{W} but the model takes {model.img_size}x{model.img_size}, and "
                             f"nothing says how this model's frames were resized; resize them first or pass --config")
        from .data import EventResize

        resize = EventResize(model.img_size)
        xt = torch.stack([resize(f) for f in xt])
    return xt, y, f"event frames {path} {tuple(x.shape)}"


def random_inputs(model, n: int, seed: int = 0, size: int | None = None) -> tuple[torch.Tensor, str]:
    """Synthetic inputs: normalised Gaussian images, or Poisson(0.3) event counts for 2-channel models."""
    g = torch.Generator().manual_seed(seed)
    size = size or model.img_size
    if model.in_channels == 2:
        return torch.poisson(torch.full((n, model.T, 2, size, size), 0.3), generator=g), f"random events x{n}"
    return torch.randn(n, model.in_channels, size, size, generator=g), f"random images x{n}"


def path_inputs(data: str) -> list[Path]:
    """Image paths from a file, a comma-separated list, or a folder."""
    from ..bounds import regular_file

    p = Path(data)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file())
    paths = [Path(s) for s in data.split(",")]
    missing = [str(q) for q in paths if not q.exists()]
    if missing:
        raise FileNotFoundError(f"no such file: {missing[0]}")
    for q in paths:
        regular_file(q, "an input")  # a FIFO would block
    return paths
