"""Training and evaluation API: ``train(recipe, **overrides)``, ``evaluate_checkpoint(...)``.

The commands ``spikedriven train`` / ``spikedriven eval`` (``spikedriven.cli.train``) sit on top of this:

    spikedriven train                                   # the digits main job (embedded data, ~2 min on 2 cores)
    spikedriven train -c fashion_mnist                   # one of our recipes (src/spikedriven/configs/*.yml)
    spikedriven train -c conf/cifar10/2_512_300E_t4.yml  # an official config, official key semantics
    spikedriven train -c cifar10_2_256 --epochs 50 --lr 5e-4 --amp   # any recipe key on the command line
    spikedriven train --resume runs/<run>                # continue exactly (bit-identical on CPU)
    torchrun --standalone --nproc_per_node=4 -m spikedriven.cli train -c cifar10_2_512   # DDP
    spikedriven eval --checkpoint runs/<run>/best.pt     # top-1 / top-5 / loss on the test split
    spikedriven eval --config conf/imagenet/8_768_300E_t4.yml --checkpoint 8_768.pth.tar --data-dir /data/in1k

The machinery lives in the modules beside this one; see docs/training.md.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch

from .recipe import DEFAULT_CONFIG, Recipe, recipe_of_run, resolve_recipe

__all__ = ["train", "evaluate_checkpoint", "recipe_of_run", "read_resume_recipe", "DEFAULT_CONFIG"]


def _recipe_for(config, overrides: dict, warn: bool = True) -> Recipe:
    overrides = dict(overrides or {})
    if isinstance(config, Recipe):
        if not overrides:
            return copy.deepcopy(config)
        return resolve_recipe(config.resolved_dict(), overrides, warn=False)
    resume = overrides.get("resume")
    if config is None and resume:
        ck = read_resume_recipe(resume)
        if ck is not None:
            report_config_edits(resume, ck, overrides)
            return recipe_of_run(ck, overrides)
    return resolve_recipe(config if config is not None else DEFAULT_CONFIG, overrides, warn=warn)


def read_resume_recipe(resume) -> dict | None:
    """The recipe stored with what ``resume`` names (``report.resume_source``): the checkpoint's, or the
    ``config.yaml`` of a run folder stopped before its first checkpoint."""
    from .report import resume_source

    p, folder = resume_source(resume)
    if p is None:
        # a run killed before its first last.pt: its resolved recipe, to start it over in its folder
        from ..config.official import load_yaml

        rec = load_yaml(folder / "config.yaml")
        return {**rec, "_explicit": list(rec)}  # config.yaml holds only the model keys the run set itself
    from ..checkpoint import CheckpointError, read_checkpoint_file

    ck = read_checkpoint_file(p)
    rec = ck.get("recipe") if isinstance(ck, dict) else None
    if rec is not None and not isinstance(rec, dict):
        raise CheckpointError(f"{p}: its 'recipe' entry is a {type(rec).__name__}, not a mapping of recipe keys")
    return rec


def report_config_edits(resume, rec: dict, overrides: dict) -> list[str]:
    """Keys of the run folder's ``config.yaml`` whose value differs from the recipe stored in the checkpoint a
    resume continues: a hand edit there is not applied (the stored recipe is, so that the resume is exact), so
    each one is named in a warning with the way to apply it. Keys given on the command line are not reported."""
    import warnings

    import yaml

    from ..config.official import load_yaml
    from .recipe import ALIASES

    p = Path(resume)
    f = (p if p.is_dir() else p.parent) / "config.yaml"
    if not f.is_file():
        return []
    try:
        on_disk = load_yaml(f)
        explicit = rec.get("_explicit", ())
        stored = yaml.safe_load(Recipe(rec, explicit=explicit if isinstance(explicit, (list, tuple)) else ())
                                .to_yaml())
    except (OSError, ValueError, yaml.YAMLError) as e:
        warnings.warn(f"{f} could not be compared with the run's recipe ({e}); the resume uses the recipe stored "
                      f"in the checkpoint", stacklevel=3)
        return []
    skip = {"spikedriven_resolved", "resume", "stop_after_steps", "start_epoch", "output", "experiment"}
    skip |= {ALIASES.get(str(k), str(k)) for k in overrides}
    changed = [str(k) for k in sorted(set(on_disk) | set(stored), key=str)
               if str(k) not in skip and on_disk.get(k) != stored.get(k)]
    if changed:
        shown = ", ".join(f"{k}: {on_disk.get(k, '(removed)')!r} in the file, {stored.get(k, '(unset)')!r} in the run"
                          for k in changed[:6]) + (f" (and {len(changed) - 6} more)" if len(changed) > 6 else "")
        warnings.warn(f"{f} was edited after the run wrote it ({shown}): a resume continues the recipe stored in "
                      f"the checkpoint and rewrites config.yaml with it; to change a key on resume, give it on the "
                      f"command line (--KEY VALUE or --set KEY=VALUE)", stacklevel=3)
    return changed


def train(config: str | os.PathLike | dict | None = None, datasets: dict | None = None, print_fn=print,
          summary: bool | None = None, overwrite: bool = False, **overrides) -> dict:
    """Train a recipe and return its final metrics (``top1``, ``top5``, ``run_dir``, ``history``, ...).

    ``config``: one of our recipe names, a YAML path (ours or official) or a dict; ``overrides``: recipe keys.
    ``datasets``: optional ``{"train", "test"}`` datasets to use instead of ``spikedriven.data``.
    ``overwrite``: the run folder (``experiment``) may hold another run or files spikedriven did not make
    (``report.open_run_dir``).
    """
    from .distributed import cleanup
    from .loop import Trainer

    r = _recipe_for(config, overrides)
    trainer = Trainer(r, datasets=datasets, print_fn=print_fn, overwrite=overwrite)
    try:
        _advise_start(trainer)
        result = trainer.fit()
        if trainer.env.is_main and not result.get("stopped"):
            _advise_end(trainer, result)
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
        trainer.close()
        if trainer.env.distributed:
            cleanup(trainer.env)


def _advise_start(trainer) -> None:
    """What the data folder said (imagefolder), and a schedule that is mostly warm-up, before the first step."""
    from .advice import warmup_warning

    if trainer.r.get("_data_note"):
        trainer.log(trainer.r["_data_note"])
    msg = warmup_warning(trainer.r, trainer.num_epochs)
    if msg and not (trainer.epoch or trainer.global_step):  # a resumed run was warned when it started
        trainer.warnings.append(msg)
        trainer.log(f"warning: {msg}")


def _advise_end(trainer, result: dict) -> None:
    """A trained model whose neurons are all silent (it learnt nothing): one warning line."""
    from .advice import silence_warning

    try:
        x = next(iter(trainer.loaders["test"]))[0].to(trainer.device).float()
        model = trainer.ema.module if trainer.ema is not None else trainer.model
        msg = silence_warning(model, [x], trainer.r)
    except Exception:  # noqa: BLE001 - advice must never fail a finished run
        return
    if msg:
        result.setdefault("warnings", []).append(msg)
        trainer._print(f"warning: {msg}")


# ------------------------------------------------------------------------------------------- eval
def evaluate_checkpoint(checkpoint: str | None = None, model_name: str | None = None, config: str | None = None,
                        dataset: str | None = None, data_dir: str | None = None, use_ema: bool = False,
                        batch_size: int = 64, workers: int = 2, max_samples: int | None = None, amp: bool = False,
                        device: str = "auto", progress: bool = True, overrides: dict | None = None) -> dict:
    """Top-1 / top-5 / loss of a checkpoint (ours or official) on a dataset's test split.

    The model comes from ``model_name`` / ``config`` / the checkpoint itself (``models.build_model``); the data
    pipeline from the recipe: the config's, the checkpoint's own (``spikedriven train`` checkpoints carry it), or
    the registered model's recipe.
    """
    from ..data.info import canonical_name
    from ..models.factory import build_model
    from .data import build_datasets, build_loaders
    from .distributed import init_distributed
    from .inputs import recipe_for_model, with_dataset
    from .loop import evaluate

    ov = dict(overrides or {})
    if not (checkpoint or model_name or config):
        raise ValueError("eval needs --checkpoint (ours), or --model NAME / --config YAML (with --checkpoint)")
    if config is not None:  # the config describes the model and the data pipeline, overrides included
        r = resolve_recipe(config, ov)
        model, meta = build_model(model_name, recipe=r, checkpoint=checkpoint, use_ema=use_ema)
        r.adopt_model(model)
    else:
        model, meta = build_model(model_name, checkpoint=checkpoint, use_ema=use_ema)
        r, src = recipe_for_model(model, meta)
        if r is None:
            raise ValueError(f"eval: {src}")
        if ov:
            r = resolve_recipe(r.resolved_dict(), ov, warn=False).adopt_model(model)
    r = with_dataset(r, canonical_name(dataset) if dataset else None, data_dir, head=model.num_classes)
    from .recipe import check_value

    r["val_batch_size"], r["workers"] = check_value("val_batch_size", batch_size), check_value("workers", workers)
    r["max_eval_samples"] = check_value("max_eval_samples", max_samples)
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
    res["dataset"] = r.data_label
    return res
