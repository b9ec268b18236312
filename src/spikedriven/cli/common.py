"""What several commands share: the model arguments and the model they build (through ``models.build_model``)."""
from __future__ import annotations

import argparse

DEFAULT_MODEL = "sdt_cifar10_2_256"


def add_model_arguments(p: argparse.ArgumentParser, what: str = "") -> None:
    """``--model``, ``-c/--config``, ``--checkpoint``, ``--ema``: the one way commands say which model to use."""
    g = p.add_argument_group("model" + (f" ({what})" if what else ""))
    g.add_argument("--model", metavar="NAME",
                   help=f"registered model name (`spikedriven models`); default: the model a `spikedriven train` "
                        f"checkpoint describes, else {DEFAULT_MODEL}")
    g.add_argument("-c", "--config", metavar="YAML",
                   help="build the model from an official conf/**/*.yml file or one of our recipes instead of --model")
    g.add_argument("--checkpoint", metavar="FILE", help="weights to load strictly (.pth.tar, .pth, .pt, .safetensors)")
    g.add_argument("--ema", action="store_true", help="load the checkpoint's EMA weights (state_dict_ema)")


def model_from_args(args: argparse.Namespace, **overrides):
    """``(model, checkpoint meta)`` for the model arguments; ``overrides`` (e.g. ``T=4``) replace constructor
    arguments. Without --model/--config a checkpoint written by ``spikedriven train`` describes its own model;
    with nothing at all, the default model is built."""
    from ..models.factory import build_model

    name, config, ckpt = getattr(args, "model", None), getattr(args, "config", None), getattr(args, "checkpoint", None)
    if not (name or config or ckpt):
        name = DEFAULT_MODEL
    return build_model(name, config=config, checkpoint=ckpt, use_ema=getattr(args, "ema", False), overrides=overrides)


def _whole(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: it must be >= {low}")
    return v


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _whole(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _whole(text, 0)


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text} is not allowed: it must be a finite number")
    return v


def unit_float(text: str) -> float:
    """argparse type: a rate, a finite number in [0, 1]."""
    v = _number(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: a rate lies in [0, 1]")
    return v


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (an energy per operation, ...)."""
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v:g} is not allowed: it must be > 0")
    return v


class LazyChoices:
    """argparse ``choices`` computed on first use (so that building the parser does not import torch)."""

    def __init__(self, load):
        self._load, self._items = load, None

    def _get(self) -> list:
        if self._items is None:
            self._items = list(self._load())
        return self._items

    def __contains__(self, item) -> bool:
        return item in self._get()

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def attention_names() -> list[str]:
    from ..layers.attention import list_attention

    return list_attention("sdt")


def shortcut_names() -> tuple[str, ...]:
    from ..layers.config import SHORTCUTS

    return SHORTCUTS
