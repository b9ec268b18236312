"""Training and evaluation: ``spikedriven train`` / ``spikedriven eval`` and the Python API.

    spikedriven train                                   # the digits main job (embedded data, ~2 min on 2 cores)
    spikedriven train -c fashion_mnist                   # one of our recipes (src/spikedriven/configs/*.yml)
    spikedriven train -c conf/cifar10/2_512_300E_t4.yml  # an official config, official key semantics
    spikedriven train -c cifar10_2_256 --epochs 50 --lr 5e-4 --amp   # any recipe key on the command line
    spikedriven train --resume runs/<run>                # continue exactly (bit-identical on CPU)
    torchrun --standalone --nproc_per_node=4 -m spikedriven.cli train -c cifar10_2_512   # DDP
    spikedriven eval --checkpoint runs/<run>/best.pt     # top-1 / top-5 / loss on the test split
    spikedriven eval --config conf/imagenet/8_768_300E_t4.yml --checkpoint 8_768.pth.tar --data-dir /data/in1k

The machinery lives in :mod:`spikedriven.training`; see docs/training.md.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .training.recipe import (Recipe, add_recipe_arguments, find_config, list_configs, recipe_overrides_from_args,
                              resolve_recipe)

__all__ = ["train", "evaluate_checkpoint", "resolve_recipe", "Recipe", "add_cli", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = "digits"


def _recipe_for(config, overrides: dict, warn: bool = True) -> Recipe:
    overrides = dict(overrides or {})
    if isinstance(config, Recipe):
        if not overrides:
            return copy.deepcopy(config)
        return resolve_recipe(config.resolved_dict(), overrides, warn=False)
    resume = overrides.get("resume")
    if config is None and resume:
        ck = _read_resume_recipe(resume)
        if ck is not None:
            return recipe_of_run(ck, overrides)
    return resolve_recipe(config if config is not None else DEFAULT_CONFIG, overrides, warn=warn)


def recipe_of_run(recipe: dict, overrides: dict | None = None) -> Recipe:
    """The recipe a checkpoint of ``spikedriven train`` stores, with ``overrides`` applied. Run-control keys of the
    invocation that wrote it (resume, stop_after_steps, start_epoch) are not inherited."""
    base = Recipe(recipe).resolved_dict(drop=("resume", "stop_after_steps", "start_epoch"))
    return resolve_recipe(base, dict(overrides or {}), warn=False)


def _read_resume_recipe(resume) -> dict | None:
    p = Path(resume)
    if p.is_dir():
        p = p / "last.pt"
    if not p.exists():
        raise FileNotFoundError(f"resume checkpoint not found: {p}")
    from .checkpoint import SAFE_GLOBALS

    with torch.serialization.safe_globals(SAFE_GLOBALS):
        ck = torch.load(p, map_location="cpu", weights_only=True)
    return ck.get("recipe") if isinstance(ck, dict) else None


def train(config: str | os.PathLike | dict | None = None, datasets: dict | None = None, print_fn=print,
          summary: bool | None = None, **overrides) -> dict:
    """Train a recipe and return its final metrics (``top1``, ``top5``, ``run_dir``, ``history``, ...).

    ``config``: one of our recipe names, a YAML path (ours or official) or a dict; ``overrides``: recipe keys.
    ``datasets``: optional ``{"train", "test"}`` datasets to use instead of ``spikedriven.data``.
    """
    from .training.distributed import cleanup
    from .training.loop import Trainer

    r = _recipe_for(config, overrides)
    trainer = Trainer(r, datasets=datasets, print_fn=print_fn)
    try:
        result = trainer.fit()
        do_summary = r.get("summary") if summary is None else summary
        if trainer.env.is_main and do_summary and not result.get("stopped"):
            try:
                text = trainer.summary()
            except Exception as e:  # noqa: BLE001 - a summary must never fail a finished run
                text = f"(summary unavailable: {e})"
            result["summary"] = text
        result["trainer"] = trainer
        return result
    finally:
        if trainer.env.distributed:
            cleanup(trainer.env)


# ------------------------------------------------------------------------------------------- eval
def _model_from_checkpoint_meta(path, use_ema: bool):
    """(model, recipe-like dict) from one of our checkpoints or an official one that carries ``args``."""
    from .checkpoint import load_checkpoint
    from .config import model_kwargs_from_official
    from .model import SpikeDrivenTransformer

    sd, meta = load_checkpoint(path, use_ema=use_ema)
    if isinstance(meta.get("model_kwargs"), dict):
        kw = dict(meta["model_kwargs"])
        rec = dict(meta.get("recipe") or {})
    elif isinstance(meta.get("args"), dict) and "dim" in meta["args"]:
        rec = {k: v for k, v in meta["args"].items() if "-" not in str(k)}
        kw = model_kwargs_from_official(rec)
    else:
        raise ValueError(f"{path} does not say which model it holds (no model_kwargs / official args); "
                         f"pass --model NAME or --config YAML")
    model = SpikeDrivenTransformer(**kw)
    model.load_state_dict(sd, strict=True)
    return model, rec


def evaluate_checkpoint(checkpoint: str | None = None, model_name: str | None = None, config: str | None = None,
                        dataset: str | None = None, data_dir: str | None = None, use_ema: bool = False,
                        batch_size: int = 64, workers: int = 2, max_samples: int | None = None, amp: bool = False,
                        device: str = "auto", progress: bool = True, overrides: dict | None = None) -> dict:
    """Top-1 / top-5 / loss of a checkpoint (ours or official) on a dataset's test split."""
    from .checkpoint import load_into_model
    from .model import create_model
    from .training.data import build_datasets, build_loaders
    from .training.distributed import init_distributed
    from .training.loop import evaluate

    ov = dict(overrides or {})
    if config is not None:
        r = resolve_recipe(config, ov)
        from .model import SpikeDrivenTransformer

        model = SpikeDrivenTransformer(**r.model_kwargs())
        if checkpoint:
            load_into_model(model, checkpoint, strict=True, use_ema=use_ema)
    elif model_name is not None:
        from .model import model_info

        info = model_info(model_name)
        model = create_model(model_name)
        if checkpoint:
            load_into_model(model, checkpoint, strict=True, use_ema=use_ema)
        base: dict[str, Any] = {"dataset": info.dataset, "model": model_name}
        if info.recipe:
            try:
                base = dict(resolve_recipe(info.recipe, warn=False, fill_dataset=False))
                base["model"] = model_name
            except FileNotFoundError:
                pass
        r = resolve_recipe(base, ov, warn=False)
    elif checkpoint is not None:
        model, rec = _model_from_checkpoint_meta(checkpoint, use_ema)
        rec = {k: v for k, v in rec.items() if not str(k).startswith("_") and k != "resume"}
        r = resolve_recipe(rec, ov, warn=False)
    else:
        raise ValueError("eval needs --checkpoint (ours), or --model NAME / --config YAML (with --checkpoint)")
    if dataset:
        base = {k: v for k, v in r.items() if not str(k).startswith("_")}
        base.update(dataset=dataset, mean=None, std=None)
        r = resolve_recipe(base, ov, warn=False)
    if data_dir:
        r["data_dir"] = data_dir
    r["val_batch_size"], r["workers"], r["max_eval_samples"] = batch_size, workers, max_samples
    r["img_size"], r["in_channels"] = model.img_size, model.in_channels
    env = init_distributed(device)
    model.to(env.device)
    ds = build_datasets(r, splits=("test",))
    loader = build_loaders(r, ds, env.rank, env.world)["test"]
    ctx = None
    if amp:
        dt = torch.float16 if env.device.type == "cuda" else torch.bfloat16
        ctx = lambda: torch.autocast(env.device.type, dtype=dt)  # noqa: E731
    t0 = time.time()
    res = evaluate(model, loader, env.device, env, ctx, progress=progress and env.is_main)
    res["time_s"] = time.time() - t0
    res["dataset"] = r.dataset_name
    return res


# ------------------------------------------------------------------------------------------- CLI
def _cmd_train(args) -> int:
    if args.list_configs:
        for name in list_configs():
            print(name)
        return 0
    overrides = recipe_overrides_from_args(args)
    quiet = overrides.get("progress") is False
    res = train(args.config, **overrides)
    trainer = res.pop("trainer")
    if not trainer.env.is_main:
        return 0
    if res.get("stopped"):
        print(f"stopped at step {res['global_step']}; resume with: spikedriven train --resume {res['run_dir']}")
        return 0
    if "top1" in res:
        ema = f" (EMA {res['ema_top1']:.2f}%)" if "ema_top1" in res else ""
        print(f"test accuracy: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%{ema}  "
              f"[best {res['best_metric']:.2f}% at epoch {res['best_epoch'] + 1}]  "
              f"in {res['elapsed_s'] / 60:.1f} min")
    if res.get("summary"):
        print(res["summary"])
    if res.get("run_dir") and not quiet:
        d = Path(res["run_dir"])
        files = [f for f in ("config.yaml", "metrics.csv", "tb", "last.pt", "best.pt", "best.safetensors",
                             "curve.png") if (d / f).exists()]
        print(f"run folder {d}: {', '.join(files)}")
    return 0


def _cmd_eval(args) -> int:
    overrides = recipe_overrides_from_args(args)
    res = evaluate_checkpoint(args.checkpoint, args.model, args.config, args.data, args.data_root, args.ema,
                              args.eval_batch_size, args.eval_workers, args.max_samples, args.eval_amp,
                              args.eval_device, progress=not args.no_progress, overrides=overrides)
    print(f"{res['dataset']} test: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
          f"({res['n']} samples, {res['time_s']:.1f} s)")
    return 0


def add_cli(subparsers) -> None:
    t = subparsers.add_parser(
        "train", help="train a Spike-driven Transformer (no arguments: the digits main job)",
        description="Train with a recipe: ours (-c NAME, see --list-configs) or an official conf/**/*.yml file; "
                    "every recipe key can be overridden below. With no arguments: a small SDT on the embedded "
                    "digits data (~2 minutes on 2 cores). Multi-process: torchrun --nproc_per_node=N -m "
                    "spikedriven.cli train ...")
    t.add_argument("-c", "--config", default=None,
                   help=f"our recipe name or a YAML file (default: {DEFAULT_CONFIG}; with --resume: the run's own)")
    t.add_argument("--list-configs", action="store_true", help="list our recipes and exit")
    add_recipe_arguments(t)
    t.set_defaults(func=_cmd_train)

    e = subparsers.add_parser("eval", help="top-1/top-5/loss of a checkpoint (ours or official) on a test split")
    e.add_argument("--checkpoint", help="our last.pt/best.pt/.safetensors or an official .pth.tar")
    e.add_argument("--model", help="registered model name (spikedriven models)")
    e.add_argument("-c", "--config", help="YAML config (ours or official) describing the model and data")
    e.add_argument("--data", help="dataset name (default: the checkpoint's / model's / config's)")
    e.add_argument("--data-root", "--data-dir", dest="data_root", help="dataset root folder")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights (state_dict_ema)")
    e.add_argument("--batch-size", dest="eval_batch_size", type=int, default=64)
    e.add_argument("--workers", dest="eval_workers", type=int, default=2)
    e.add_argument("--max-samples", type=int, help="evaluate a fixed random subset of N test samples")
    e.add_argument("--amp", dest="eval_amp", action="store_true", help="autocast (CUDA fp16 / CPU bf16)")
    e.add_argument("--device", dest="eval_device", default="auto")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--set", dest="r__set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key used for the data pipeline (e.g. crop_pct=1.0, img_size=288)")
    e.set_defaults(func=_cmd_eval)


def main(argv=None) -> int:
    """``python -m spikedriven.train [train options]``."""
    p = argparse.ArgumentParser(prog="python -m spikedriven.train")
    sub = p.add_subparsers(dest="command")
    add_cli(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("train", "eval"):
        argv = ["train", *argv]
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
