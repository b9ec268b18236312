"""``spikedriven train`` and ``spikedriven eval``: training recipes and checkpoint evaluation from the shell.

Every recipe key (``spikedriven.training.recipe.SCHEMA``) is an option (``--warmup-epochs 5``, ``--no-amp``,
``--TET``); ``--set KEY=VALUE`` sets any key with a YAML-parsed value.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import add_model_arguments


def register(sub) -> None:
    from ..training.recipe import DEFAULT_CONFIG

    t = sub.add_parser(
        "train", help="train a Spike-driven Transformer (no arguments: the digits main job)",
        description="Train with a recipe: ours (-c NAME, see --list-configs) or an official conf/**/*.yml file; "
                    "every recipe key can be overridden below. With no arguments: a small SDT on the embedded "
                    "digits data (about a minute on 2 cores). Multi-process: torchrun --nproc_per_node=N -m "
                    "spikedriven.cli train ...")
    t.add_argument("-c", "--config", default=None,
                   help=f"our recipe name or a YAML file (default: {DEFAULT_CONFIG}; with --resume: the run's own); "
                        f"keys it leaves out take the official train.py defaults")
    t.add_argument("--list-configs", action="store_true", help="list our recipes and exit")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in the --experiment folder although it holds a finished run (its run files are "
                        "removed) or files spikedriven did not make (those named like a run's are replaced, others "
                        "left alone) (default: refused)")
    add_recipe_arguments(t)
    t.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="top-1/top-5/loss of a checkpoint (ours or official) on a test split",
                       description="Evaluate a model on a dataset's test split. The model and the data pipeline come "
                                   "from a `spikedriven train` checkpoint alone, or from --model (its recipe) / "
                                   "--config with --checkpoint weights.")
    add_model_arguments(e, "and, with --config, the data pipeline")
    e.add_argument("--data", help="dataset name (default: the checkpoint's / model's / config's)")
    e.add_argument("--data-root", "--data-dir", dest="data_root", help="dataset root folder")
    e.add_argument("--batch-size", dest="eval_batch_size", type=int, default=64, help="(default: 64)")
    e.add_argument("--workers", dest="eval_workers", type=int, default=2, help="(default: 2)")
    e.add_argument("--max-samples", type=int, help="evaluate a fixed random subset of N >= 1 test samples")
    e.add_argument("--amp", dest="eval_amp", action="store_true", help="autocast (CUDA fp16 / CPU bf16)")
    e.add_argument("--device", dest="eval_device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: auto)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--set", dest="r__set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key used for the data pipeline (e.g. crop_pct=1.0, img_size=288)")
    e.set_defaults(func=run_eval)


def run_train(args) -> int:
    from ..training.api import train
    from ..training.recipe import list_configs

    if args.list_configs:
        for name in list_configs():
            print(name)
        return 0
    overrides = recipe_overrides_from_args(args)
    quiet = overrides.get("progress") is False
    res = train(args.config, overwrite=args.overwrite, **overrides)
    trainer = res.pop("trainer")
    if not trainer.env.is_main:
        return 0
    if res.get("stopped"):
        print(f"stopped at step {res['global_step']}; resume with: spikedriven train --resume {res['run_dir']}")
        return 0
    if "top1" in res:
        ema = f" (EMA {res['ema_top1']:.2f}%)" if "ema_top1" in res else ""
        metric = str(trainer.r.get("eval_metric") or "top1")
        best = (f"best test loss {res['best_metric']:.4f}" if "loss" in metric else
                f"best {'top-5 ' if metric == 'top5' else ''}{res['best_metric']:.2f}%")
        print(f"test accuracy: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%{ema}  "
              f"[{best} at epoch {res['best_epoch'] + 1}]  in {res['elapsed_s'] / 60:.1f} min")
    if res.get("summary"):
        print(res["summary"])
    if res.get("run_dir") and not quiet:
        d = Path(res["run_dir"])
        files = [f for f in ("config.yaml", "metrics.csv", "train.log", "tb", "last.pt", "best.pt", "best.safetensors",
                             "curve.png") if (d / f).exists()]
        print(f"run folder {d}: {', '.join(files)}")
    return 0


def run_eval(args) -> int:
    from ..training.api import evaluate_checkpoint

    overrides = recipe_overrides_from_args(args)
    res = evaluate_checkpoint(args.checkpoint, args.model, args.config, args.data, args.data_root, args.ema,
                              args.eval_batch_size, args.eval_workers, args.max_samples, args.eval_amp,
                              args.eval_device, progress=not args.no_progress, overrides=overrides)
    print(f"{res['dataset']} test: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"({res['n']} samples, {res['time_s']:.1f} s)")
    return 0


def _default_texts() -> dict[str, str]:
    """The value each recipe key really takes when the option is not given: a -c recipe's own value, else the
    official train.py default; without -c, the default recipe's value (or the registered model's / dataset's)."""
    from ..config.official import load_yaml
    from ..training.recipe import ALIASES, DEFAULT_CONFIG, MODEL_KEYS, SCHEMA, find_config

    try:
        base = {ALIASES.get(str(k), str(k)): v for k, v in load_yaml(find_config(DEFAULT_CONFIG)).items()}
    except (OSError, ValueError):
        base = {}
    model = base.get("model")
    filled = {"num_classes", "in_channels", "img_size", "mean", "std"}
    out = {}
    for key, (default, _typ, _help, _allowed) in SCHEMA.items():
        if key in filled and default is None:
            out[key] = "the recipe's value, else the model's or the dataset's"
            continue
        shown = "unset" if default is None else default
        if key in base:
            bare = base[key] if base[key] is not None else "unset"
        elif key in MODEL_KEYS and model not in (None, "", "sdt"):
            bare = f"set by its model {model}"
        else:
            out[key] = f"the recipe's value, else {shown}"
            continue
        out[key] = f"the recipe's value, else {shown}; without -c: {bare} ({DEFAULT_CONFIG} recipe)"
    return out


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """One option per recipe key (``--warmup-epochs`` and ``--warmup_epochs``); all default to "unset", and each
    help says which value applies then. A key named ``no_X`` is a flag ``--no-X`` (and ``--X`` turns it off)."""
    import yaml  # noqa: F401  (keeps the import cost here, not in register())
    from ..training.recipe import SCHEMA

    g = p.add_argument_group("recipe settings (override the -c recipe; with --resume, the run's own recipe)")
    short = {"batch_size": ["-b"], "val_batch_size": ["-vb"], "workers": ["-j"]}
    extra = {"TET": ["--tet"], "time_steps": ["--T"], "dim": ["--embed-dim"], "layer": ["--depth"],
             "initial_checkpoint": ["--init-from"]}
    defaults = _default_texts()
    for key, (default, typ, help_, _allowed) in SCHEMA.items():
        names = short.get(key, []) + [f"--{key.replace('_', '-')}"]
        if "_" in key:
            names.append(f"--{key}")
        names += extra.get(key, [])
        t = typ.replace("opt_", "")
        shown = f" [default: {defaults[key]}]".replace("%", "%%")
        help_ = help_.replace("%", "%%")
        if t == "bool" and key.startswith("no_"):
            pos = key[3:]
            g.add_argument(*names, dest=f"r_{key}", action="store_const", const=True, default=None,
                           help=help_ + shown)
            g.add_argument(*dict.fromkeys([f"--{pos.replace('_', '-')}", f"--{pos}"]), dest=f"r_{key}",
                           action="store_const", const=False, help=f"the opposite of --{key.replace('_', '-')}")
        elif t == "bool":
            g.add_argument(*names, dest=f"r_{key}", action=argparse.BooleanOptionalAction, default=None,
                           help=help_ + shown)
        elif t in ("floats", "ints", "strs"):
            g.add_argument(*names, dest=f"r_{key}", type={"floats": float, "ints": int, "strs": str}[t], nargs="+",
                           default=None, help=help_ + shown, metavar={"floats": "X", "ints": "N", "strs": "NAME"}[t])
        else:
            conv = {"int": int, "float": float, "str": str}.get(t, str)
            g.add_argument(*names, dest=f"r_{key}", type=conv, default=None, help=help_ + shown,
                           metavar=key.upper() if len(key) < 14 else "V")
    g.add_argument("--set", dest="r__set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any recipe key (value parsed as YAML), e.g. --set scale='[0.5, 1.0]'")


def recipe_overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    out = {}
    for k, v in vars(args).items():
        if k.startswith("r_") and k != "r__set" and v is not None:
            out[k[2:]] = v
    for item in getattr(args, "r__set", []) or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({why}); quote strings and close "
                             f"brackets, e.g. --set scale='[0.5, 1.0]'") from None
        from ..bounds import check_tree

        check_tree(value, f"--set {item[:60]!r}", max_nodes=100_000, max_depth=50)  # YAML aliases expanded
        out[k.strip().replace("-", "_")] = value
    return out
