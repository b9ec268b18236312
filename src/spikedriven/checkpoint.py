"""Safe checkpoint I/O: official ``.pth.tar`` files, our own checkpoints, and safetensors.

Nothing here executes pickled code: ``torch.load(..., weights_only=True)`` with exactly the extra types the
official timm ``CheckpointSaver`` files need allow-listed (``argparse.Namespace`` for the saved ``args``).
All writes are atomic (temporary file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_into_model",
    "save_safetensors",
    "atomic_save",
    "atomic_write_bytes",
    "SAFE_GLOBALS",
]

# The only non-tensor, non-builtin type found in official SDT checkpoints (train.py saves `args`).
SAFE_GLOBALS = [argparse.Namespace]

_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or does not match the model."""


def atomic_write_bytes(path: str | os.PathLike, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` and atomically move the result to ``path`` (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda tmp: torch.save(obj, tmp))


def _read_raw(path: Path, map_location) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        device = str(map_location) if map_location is not None else "cpu"
        sd = load_file(str(path), device=device)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return {"state_dict": sd, "_safetensors_metadata": meta}
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(
            f"could not load {path} safely (weights_only=True; allowed extra types: "
            f"{[t.__module__ + '.' + t.__qualname__ for t in SAFE_GLOBALS]}). The file may be corrupt, not a "
            f"PyTorch checkpoint, or contain pickled code objects, which are never executed. Original error: {e}"
        ) from e


def load_checkpoint(path: str | os.PathLike, map_location="cpu", use_ema: bool = False) -> tuple[dict, dict]:
    """Read a checkpoint and return ``(state_dict, meta)``.

    Accepts: a bare state_dict; timm/official dicts with ``state_dict`` (and optional ``state_dict_ema``,
    ``epoch``, ``arch``, ``args``, ``metric``...); our training checkpoints; ``.safetensors``. A ``module.``
    prefix (DataParallel/DDP) is stripped. ``use_ema=True`` picks the EMA weights and fails if absent.
    """
    path = Path(path)
    raw = _read_raw(path, map_location)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict (state_dict or checkpoint), got {type(raw).__name__}")
    meta = {k: v for k, v in raw.items() if k not in _STATE_KEYS and not isinstance(v, torch.Tensor)}
    if use_ema:
        key = next((k for k in ("state_dict_ema", "model_ema") if k in raw), None)
        if key is None:
            raise CheckpointError(f"{path}: use_ema=True but the file has no 'state_dict_ema'/'model_ema' entry "
                                  f"(keys: {sorted(raw)[:12]})")
        sd = raw[key]
    elif "state_dict" in raw or "model" in raw:
        sd = raw.get("state_dict", raw.get("model"))
    elif all(isinstance(v, torch.Tensor) for v in raw.values()):
        sd, meta = raw, {}
    else:
        raise CheckpointError(f"{path}: no 'state_dict' entry and not a bare state_dict (top-level keys: "
                              f"{sorted(map(str, raw))[:12]})")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: the state_dict entry is not a mapping of names to tensors")
    sd = OrderedDict((k[len("module."):] if k.startswith("module.") else k, v) for k, v in sd.items())
    if isinstance(meta.get("args"), argparse.Namespace):
        meta["args"] = vars(meta["args"])
    return sd, meta


def _mismatch_report(model: nn.Module, sd: dict) -> tuple[list, list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    return missing, unexpected, shapes


def load_into_model(model: nn.Module, path: str | os.PathLike, strict: bool = True, use_ema: bool = False,
                    map_location="cpu") -> dict:
    """Load weights from ``path`` into ``model``; a strict mismatch raises with every offending key listed.

    Returns a dict with ``missing``, ``unexpected``, ``shape_mismatch`` and the file's ``meta``.
    """
    sd, meta = load_checkpoint(path, map_location=map_location, use_ema=use_ema)
    return {**load_state_into_model(model, sd, strict, source=str(path)), "meta": meta}


def load_state_into_model(model: nn.Module, sd: dict, strict: bool = True, source: str = "state_dict") -> dict:
    """:func:`load_into_model` for a state_dict already read by :func:`load_checkpoint` (``source`` names it in
    errors). Returns ``missing``, ``unexpected`` and ``shape_mismatch``."""
    missing, unexpected, shapes = _mismatch_report(model, sd)
    if shapes or (strict and (missing or unexpected)):
        lines = [f"checkpoint {source} does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
        for k, got, want in shapes[:20]:
            lines.append(f"  shape mismatch {k}: checkpoint {got} vs model {want}")
        hint = _config_hint(sd)
        if hint:
            lines.append(f"  the checkpoint looks like: {hint}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(sd, strict=strict)
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shapes}


def _config_hint(sd: dict) -> str:
    """Infer (embed_dim, depth, in_channels, num_classes) from a state_dict to explain a mismatch."""
    try:
        w0 = sd["patch_embed.proj_conv.weight"]
        d = sd["patch_embed.rpe_conv.weight"].shape[0]
        depth = len({k.split(".")[1] for k in sd if k.startswith("block.")})
        k = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        plif = any(k_.endswith("_lif.w") for k_ in sd)
        return (f"embed_dim={d}, depth={depth}, in_channels={w0.shape[1]}, num_classes={k}, "
                f"spike_mode={'plif' if plif else 'lif'}")
    except (KeyError, IndexError):
        return ""


def save_safetensors(model_or_state: nn.Module | dict, path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write a model's state_dict as safetensors (atomically). Metadata values must be strings."""
    from safetensors.torch import save_file

    sd = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, lambda tmp: save_file(sd, tmp, metadata=meta))
