"""``spikedriven`` command line: one subcommand per job.

Subcommands defined here: ``models``, ``forward``, ``convert``. Every other module that exposes
``add_cli(subparsers)`` (verify, train, energy, viz, engine) contributes its own subcommand.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import torch

_PLUGIN_MODULES = ("verify", "train", "energy", "viz", "engine")


DEFAULT_MODEL = "sdt_cifar10_2_256"


def model_from_args(args, **overrides):
    """``(model, checkpoint meta)`` from ``--config`` (YAML) or ``--model`` (registry name), with the weights of
    ``--checkpoint`` if given (the file is read once; meta is ``{}`` without one).

    With neither, a checkpoint written by ``spikedriven train`` describes its own model (its ``model_kwargs``);
    otherwise the default model is built. ``overrides`` (e.g. ``T=4``) replace constructor arguments.
    """
    from .checkpoint import load_checkpoint, load_state_into_model
    from .model import SpikeDrivenTransformer, create_model

    ckpt = getattr(args, "checkpoint", None)
    sd, meta = load_checkpoint(ckpt, use_ema=getattr(args, "ema", False)) if ckpt else (None, {})
    if getattr(args, "config", None):
        from .config import create_model_from_yaml

        model = create_model_from_yaml(args.config, **overrides)
    elif getattr(args, "model", None):
        model = create_model(args.model, **overrides)
    elif isinstance(meta.get("model_kwargs"), dict):
        model = SpikeDrivenTransformer(**{**meta["model_kwargs"], **overrides})
        model.model_name = f"sdt_{model.depth}_{model.embed_dim} ({Path(ckpt).name})"
    elif ckpt:
        raise ValueError(f"{ckpt} does not say which model it holds (no model_kwargs: not written by "
                         f"spikedriven train); pass --model NAME or --config YAML")
    else:
        model = create_model(DEFAULT_MODEL, **overrides)
    if ckpt:
        load_state_into_model(model, sd, strict=True, source=str(ckpt))
    return model, meta


def build_model_from_args(args, **overrides):
    """The model of :func:`model_from_args`."""
    return model_from_args(args, **overrides)[0]


def _cmd_models(args) -> int:
    from .model import list_models, model_info

    rows = [("name", "dataset", "L-D", "T", "img", "params", "paper top-1", "official config")]
    for n in list_models(args.pattern):
        i = model_info(n)
        k = i.kwargs
        rows.append((n, i.dataset, f"{k['depth']}-{k['embed_dim']}", str(k["T"]), str(k["img_size"]),
                     f"{i.params:,}" if i.params else "-", f"{i.paper_top1}" if i.paper_top1 else "-",
                     i.official_config or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for j, r in enumerate(rows):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _cmd_forward(args) -> int:
    from .neuron import LIF, ParametricLIF

    torch.manual_seed(args.seed)
    model = build_model_from_args(args).eval()
    n_params = sum(p.numel() for p in model.parameters())
    size = args.img_size or model.img_size
    if model.in_channels == 2:
        x = torch.poisson(torch.full((args.batch, model.T, 2, size, size), 0.3))
        kind = f"random event counts [B={args.batch}, T={model.T}, 2, {size}, {size}]"
    else:
        x = torch.randn(args.batch, model.in_channels, size, size)
        kind = f"random normalised images [B={args.batch}, {model.in_channels}, {size}, {size}] repeated T={model.T}"
    from .model import bn_is_calibrated, calibrate_bn

    if not bn_is_calibrated(model):
        calibrate_bn(model, [x])
        print("untrained model: BatchNorm statistics calibrated on this input so that neurons fire")
    rates: dict[str, float] = {}
    hooks = [m.register_forward_hook(lambda m_, a, o, n=n: rates.__setitem__(n, float(o.float().mean())))
             for n, m in model.named_modules() if isinstance(m, (LIF, ParametricLIF))]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    name = getattr(model, "model_name", args.config)
    print(f"model {name}: {n_params:,} parameters; input: {kind}")
    print(f"logits {tuple(logits.shape)}:")
    torch.set_printoptions(precision=4, linewidth=120, sci_mode=False)
    print(logits)
    print(f"firing rates of the {len(rates)} neuron layers that ran (fraction of 1s):")
    for n, r in rates.items():
        print(f"  {n:40s} {r:.4f}")
    print(f"mean firing rate {sum(rates.values()) / max(len(rates), 1):.4f}")
    return 0


def _cmd_convert(args) -> int:
    from .checkpoint import load_checkpoint, save_safetensors

    sd, meta = load_checkpoint(args.src, use_ema=args.ema)
    md = {"source": str(args.src)}
    for k in ("epoch", "arch", "metric"):
        if k in meta:
            md[k] = str(meta[k])
    save_safetensors(sd, args.dst, metadata=md)
    print(f"wrote {args.dst}: {len(sd)} tensors, {sum(v.numel() for v in sd.values()):,} elements")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="spikedriven", description="Spike-driven Transformer: models, training, "
                                "evaluation, energy and verification.")
    p.add_argument("--version", action="version", version=f"spikedriven {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    m = sub.add_parser("models", help="list the model zoo")
    m.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'sdt_cifar*'")
    m.set_defaults(func=_cmd_models)

    f = sub.add_parser("forward", help="one forward pass on random input: logits, firing rates, parameter count")
    f.add_argument("--model", help="registered model name (default: the checkpoint's model, else "
                   f"{DEFAULT_MODEL})")
    f.add_argument("--config", help="YAML config (official conf/**/*.yml or ours) instead of --model")
    f.add_argument("--checkpoint")
    f.add_argument("--ema", action="store_true", help="load the EMA weights of the checkpoint")
    f.add_argument("--batch", type=int, default=2)
    f.add_argument("--img-size", type=int)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_forward)

    c = sub.add_parser("convert", help="checkpoint (.pth.tar/.pth) -> .safetensors, read safely")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--ema", action="store_true", help="take state_dict_ema")
    c.set_defaults(func=_cmd_convert)

    for mod in _PLUGIN_MODULES:
        try:
            module = importlib.import_module(f"spikedriven.{mod}")
        except ModuleNotFoundError as e:
            if e.name == f"spikedriven.{mod}":
                continue
            raise
        if hasattr(module, "add_cli"):
            module.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("SPIKEDRIVEN_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"spikedriven {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
