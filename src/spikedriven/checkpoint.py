"""Safe checkpoint I/O: official ``.pth.tar`` files, our own checkpoints, and safetensors.

Reading never executes pickled code: ``torch.load(..., weights_only=True)`` with exactly the extra types the
official timm ``CheckpointSaver`` files need allow-listed (``argparse.Namespace`` for the saved ``args``), or
safetensors. Every failure to read (missing, empty, truncated, random or hostile file, a directory) is a
:class:`CheckpointError` with a one-line reason.

Loading weights into a model (:func:`load_state_into_model`, used by every path that loads weights) is strict:
every key the model has must be present (unless partial loading is asked for explicitly), shapes must match, a
floating-point tensor must receive floating-point values (integer buffers such as ``num_batches_tracked`` stay
integer), non-finite (NaN/inf) values are refused (float8 kinds included), BatchNorm variances must be >= 0,
sparse/quantized tensors are refused in one line, and two keys that name one weight once ``module.`` is stripped
are an error (never one of them kept silently).

All writes are atomic (temporary file in the same folder, then ``os.replace``); the written file gets the
permissions a plain ``open()`` would give it (``0666`` minus the umask); a failed write (e.g. a full disk) raises
``outputs.OutputError`` and leaves the previous file in place (see :mod:`spikedriven.outputs`).
"""
from __future__ import annotations

import argparse
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "read_checkpoint_file",
    "load_into_model",
    "load_state_into_model",
    "check_state_values",
    "strip_module_prefix",
    "save_safetensors",
    "atomic_save",
    "atomic_write_bytes",
    "remove_stale_temp_files",
    "SAFE_GLOBALS",
]

# The only non-tensor, non-builtin type found in official SDT checkpoints (train.py saves `args`).
SAFE_GLOBALS = [argparse.Namespace]

_TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng", "amp")
_STATE_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


class CheckpointError(RuntimeError):
    """A checkpoint file could not be read or written, or does not match the model."""


def _first_line(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ writing
# every write goes through spikedriven.outputs (one rule for all outputs); the names stay importable from here
from .outputs import atomic_write_bytes, remove_stale_temp_files  # noqa: E402


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (``outputs.atomic_write``)."""
    atomic_write_bytes(path, lambda tmp: torch.save(obj, tmp))


# ------------------------------------------------------------------------------------------------ reading
def _unpickling_reason(msg: str) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return (f"it asks for the Python object {m.group(1)}, which a checkpoint never needs (refused; nothing in "
                f"the file was run)")
    m = re.search(r"(Unsupported operand \d+|Trying to call reduce for [\w.]+|Unsupported class [\w.]+)", msg)
    if m:
        return f"it is not a checkpoint that can be read safely ({m.group(1)}; nothing in the file was run)"
    return "its pickled data cannot be read safely (nothing in the file was run)"


def read_checkpoint_file(path: str | os.PathLike, map_location="cpu") -> Any:
    """The object stored in ``path`` (``.safetensors``: ``{"state_dict", "_safetensors_metadata"}``), read without
    running code. Raises FileNotFoundError for a missing file and :class:`CheckpointError` for anything else."""
    from .bounds import regular_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    try:
        size = regular_file(path, "a checkpoint", CheckpointError)  # a FIFO would block open() below
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {_first_line(e)}") from e
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint (an interrupted copy or write?)")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        device = str(map_location) if map_location is not None else "cpu"
        try:
            with safe_open(str(path), framework="pt", device=device) as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            raise CheckpointError(f"{path}: not a valid .safetensors file, it may be truncated or corrupt "
                                  f"({_first_line(e)})") from None
        return {"state_dict": sd, "_safetensors_metadata": meta}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            with torch.serialization.safe_globals(SAFE_GLOBALS):
                obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        import pickle

        if isinstance(e, pickle.UnpicklingError):
            why = _unpickling_reason(str(e))
        elif isinstance(e, EOFError):
            why = "the file ends early (truncated)"
        elif "central directory" in str(e) or "zip archive" in str(e):
            why = "it is truncated or corrupt (damaged zip archive)"
        else:
            why = f"it is not a PyTorch checkpoint, or it is damaged ({type(e).__name__}: {_first_line(e)})"
        raise CheckpointError(f"could not load {path} safely: {why}") from None
    from .bounds import check_tree

    # shared references in the pickle (args, recipe) cost nothing here but explode wherever they are expanded
    check_tree(obj, f"{path}: its pickled data", error=CheckpointError)
    return obj


def load_checkpoint(path: str | os.PathLike, map_location="cpu", use_ema: bool = False) -> tuple[dict, dict]:
    """Read a checkpoint and return ``(state_dict, meta)``.

    Accepts: a bare state_dict; timm/official dicts with ``state_dict`` (and optional ``state_dict_ema``,
    ``epoch``, ``arch``, ``args``, ``metric``...); our training checkpoints; ``.safetensors``. A ``module.``
    prefix (DataParallel/DDP) is stripped. ``use_ema=True`` picks the EMA weights and fails if absent.
    """
    path = Path(path)
    raw = read_checkpoint_file(path, map_location)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict (state_dict or checkpoint), got {type(raw).__name__}")
    # what describes the file, not the training state it carries (optimizer, scheduler, scaler, RNG states)
    meta = {k: v for k, v in raw.items() if k not in _STATE_KEYS and k not in _TRAINING_STATE
            and not isinstance(v, torch.Tensor)}
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
    odd = [k for k, v in sd.items() if v.layout != torch.strided or v.is_quantized]
    if odd:
        raise CheckpointError(f"{path}: {odd[0]!r} is a {str(sd[odd[0]].layout).replace('torch.', '')}"
                              f"{' quantized' if sd[odd[0]].is_quantized else ''} tensor ({len(odd)} such); "
                              f"weights are read as plain dense tensors (convert them with .to_dense() first)")
    sd = strip_module_prefix(sd, str(path))
    if isinstance(meta.get("args"), argparse.Namespace):
        meta["args"] = vars(meta["args"])
    return sd, meta


def strip_module_prefix(sd: dict, source: str = "state_dict") -> OrderedDict:
    """``sd`` without the ``module.`` prefix of DataParallel/DDP; two keys that become one name (``head.weight``
    and ``module.head.weight``) are refused: which one to keep cannot be known, and keeping either is a guess."""
    out: OrderedDict = OrderedDict()
    for k, v in sd.items():
        name = k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k
        if name in out:
            other = next(o for o in sd if o != k and (o[len("module."):] if isinstance(o, str) and
                                                       o.startswith("module.") else o) == name)
            raise CheckpointError(f"checkpoint {source} holds both {other!r} and {k!r}, which name the same weight "
                                  f"once the DataParallel prefix 'module.' is removed: refusing to pick one")
        out[name] = v
    return out


def _mismatch_report(model: nn.Module, sd: dict) -> tuple[list, list, list]:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    return missing, unexpected, shapes


def _kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_complex():
        return "complex"
    return "floating" if t.is_floating_point() else "integer"


def _nonfinite(t: torch.Tensor) -> int:
    """NaN/inf count of a floating tensor; float8 kinds are widened first (isfinite is not implemented for e4m3,
    and float8_e8m0fnu's NaN is not seen by it)."""
    if t.dtype.itemsize == 1 or t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = t.to(torch.float32)
    return int((~torch.isfinite(t)).sum())


def _bn_running_vars(model: nn.Module) -> set[str]:
    return {f"{n}.running_var" if n else "running_var" for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and getattr(m, "running_var", None) is not None}


def check_state_values(model: nn.Module, sd: dict, source: str = "state_dict") -> None:
    """Refuse values that would load silently but wrongly: a tensor that is not a plain dense one (sparse,
    quantized), a tensor of another kind than the model's (a float parameter fed int8/int32/bool values, a float
    ``num_batches_tracked``), NaN/inf values (float8 kinds included) and a BatchNorm ``running_var`` below 0
    (its square root is NaN). The one check for every state a model receives: weights, EMA, teacher."""
    own = model.state_dict()
    layouts = [f"{k} is {str(sd[k].layout).replace('torch.', '')}{' quantized' if sd[k].is_quantized else ''}"
               for k in own if k in sd and (sd[k].layout != torch.strided or sd[k].is_quantized)]
    if layouts:
        raise CheckpointError(f"checkpoint {source} has tensors that are not plain dense arrays: "
                              f"{'; '.join(layouts[:5])}{f' (and {len(layouts) - 5} more)' if len(layouts) > 5 else ''}"
                              f"; the model's weights are dense (convert them with .to_dense() first)")
    kinds, bad, neg = [], [], []
    variances = _bn_running_vars(model)
    for k, mine in own.items():
        if k not in sd:
            continue
        t = sd[k]
        if _kind(t) != _kind(mine):
            needs = {"floating": "a floating-point", "integer": "an integer"}.get(_kind(mine), f"a {_kind(mine)}")
            kinds.append(f"{k} is {str(t.dtype).replace('torch.', '')}, the model needs {needs} tensor")
        elif t.is_floating_point() and t.numel():
            n = _nonfinite(t)
            if n:
                bad.append(f"{k} ({n} of {t.numel()} values)")
            elif k in variances and bool((t.to(torch.float32) < 0).any()):
                neg.append(f"{k} ({int((t.to(torch.float32) < 0).sum())} of {t.numel()} values)")
    if kinds:
        raise CheckpointError(f"checkpoint {source} has tensors of the wrong kind: {'; '.join(kinds[:5])}"
                              f"{f' (and {len(kinds) - 5} more)' if len(kinds) > 5 else ''}; refusing to load "
                              f"(the values would be cast silently)")
    if bad:
        raise CheckpointError(f"checkpoint {source} holds NaN/inf weights: {', '.join(bad[:5])}"
                              f"{f' (and {len(bad) - 5} more tensors)' if len(bad) > 5 else ''}; refusing to load "
                              f"(a diverged or corrupt model)")
    if neg:
        raise CheckpointError(f"checkpoint {source} has negative BatchNorm variances: {', '.join(neg[:5])}"
                              f"{f' (and {len(neg) - 5} more tensors)' if len(neg) > 5 else ''}; refusing to load "
                              f"(a variance is >= 0; the normalisation would give NaN)")


def load_into_model(model: nn.Module, path: str | os.PathLike, strict: bool = True, use_ema: bool = False,
                    map_location="cpu") -> dict:
    """Load weights from ``path`` into ``model``; a strict mismatch raises with every offending key listed.

    Returns a dict with ``missing``, ``unexpected``, ``shape_mismatch`` and the file's ``meta``.
    """
    sd, meta = load_checkpoint(path, map_location=map_location, use_ema=use_ema)
    return {**load_state_into_model(model, sd, strict, source=str(path)), "meta": meta}


def load_state_into_model(model: nn.Module, sd: dict, strict: bool = True, source: str = "state_dict") -> dict:
    """:func:`load_into_model` for a state_dict already read by :func:`load_checkpoint` (``source`` names it in
    errors). Returns ``missing``, ``unexpected`` and ``shape_mismatch``.

    ``strict=False`` is partial loading, which the caller must have been asked for explicitly: the keys the
    model and the file share are loaded, the returned ``missing``/``unexpected`` say what was not (report them).
    In both modes shapes must match, tensor kinds must match and values must be finite (see
    :func:`check_state_values`); nothing is loaded when any check fails."""
    missing, unexpected, shapes = _mismatch_report(model, sd)
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(source, missing, unexpected, shapes, sd))
    if not strict and not (set(sd) & set(model.state_dict())):
        raise CheckpointError(f"checkpoint {source} shares no key with the model (partial loading would load "
                              f"nothing)")
    check_state_values(model, sd, source)
    model.load_state_dict(sd, strict=strict)
    return {"missing": missing, "unexpected": unexpected, "shape_mismatch": shapes}


def _mismatch_message(source: str, missing: list, unexpected: list, shapes: list, sd: dict) -> str:
    """One short line: how many keys are missing, unexpected and mismatched, the first three of each named, what
    the file looks like, and what to do."""
    def first(names):
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''} ("
                     + first([f"{k}: checkpoint {got} vs model {want}" for k, got, want in shapes]) + ")")
    hint = _config_hint(sd)
    todo = "build the model the checkpoint was written for (--model NAME or --config YAML matching it)"
    if not shapes:  # partial loading cannot take a tensor of another shape
        todo += ", or load only the keys both have: spikedriven train --init-from FILE --partial"
    return (f"checkpoint {source} does not match the model: {'; '.join(parts)}"
            + (f"; the checkpoint looks like: {hint}" if hint else "") + f"; {todo}")


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
