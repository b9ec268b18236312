"""The one way to build a model: from a registry name, a YAML file (official or ours), a recipe, or a checkpoint.

Every entry point (``create_model``, ``config.create_model_from_yaml``, the trainer, every command) goes through
:func:`build_model`. A source first becomes a :class:`ModelSpec` (family + constructor keyword arguments + the
registry name if there is one), which :func:`instantiate` turns into a module. Models remember where they came
from: ``model.model_name`` (registry name or a description) and ``model.model_family``.
"""
from __future__ import annotations

import copy
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .registry import family, is_registered, list_families, model_info

__all__ = ["ModelSpec", "spec_from_name", "spec_from_recipe", "spec_from_checkpoint", "instantiate", "build_model",
           "create_model", "constructor_args"]

# Recipe keys (official names where they exist) -> constructor arguments. The official ones come from
# config.official.OFFICIAL_TO_MODEL; these are ours.
_OUR_RECIPE_KEYS = {"drop_path_rate": "drop_path_rate", "attn_mode": "attn_mode", "shortcut": "shortcut",
                    "dvs_mode": "dvs_mode", "lif_backend": "lif_backend", "embed_dims": "embed_dim", "kd": "kd",
                    "downsample_strides": "downsample_strides"}


@dataclass
class ModelSpec:
    family: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # registry name, when the model is (a variant of) a registered one
    source: str = ""  # where the spec came from, for messages


def constructor_args(family_name: str) -> set[str]:
    """Keyword arguments the family's constructor accepts."""
    params = inspect.signature(family(family_name).cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _checked(family_name: str, kwargs: dict, what: str) -> dict:
    unknown = set(kwargs) - constructor_args(family_name)
    if unknown:
        raise TypeError(f"unknown model argument(s) {sorted(unknown)} for {what}; valid: "
                        f"{sorted(constructor_args(family_name))}")
    return kwargs


def spec_from_name(name: str, **overrides) -> ModelSpec:
    """A registered model (or a family name with explicit arguments), with ``overrides`` replacing arguments."""
    if name in list_families():
        return ModelSpec(name, _checked(name, dict(overrides), f"family {name!r}"), None, name)
    info = model_info(name)
    kwargs = copy.deepcopy(info.kwargs)
    kwargs.update(_checked(info.family, dict(overrides), repr(name)))
    return ModelSpec(info.family, kwargs, name, name)


def spec_from_recipe(r) -> ModelSpec:
    """The model of a training recipe: its ``model`` key names a registered model (explicit architecture keys
    override it) or a family ("sdt": built from the official keys dim/layer/time_steps/...)."""
    from ..config.official import OFFICIAL_TO_MODEL, model_kwargs_from_official
    from ..data.info import uses_erode

    name = r.get("model") or "sdt"
    explicit = getattr(r, "explicit", set(r))
    if name in ("sdt", ""):  # the official train.py: every architecture key from the recipe, official defaults
        if r.get("dim") is None:
            raise ValueError("the config has no 'dim' key: with model 'sdt' the model is built from the official keys "
                             "(dim, layer, time_steps, ...) and the embedding dimension is set only there; set dim, or "
                             "model: <registered name> (spikedriven models)")
        kwargs = model_kwargs_from_official({k: v for k, v in r.items() if v is not None})
        kwargs["dvs_mode"] = uses_erode(r.get("dataset") or "")
        spec = ModelSpec("sdt", kwargs, None, "recipe")
    else:
        spec = spec_from_name(name)
    from ..training.recipe import SCHEMA

    accepted = constructor_args(spec.family)
    keys = {k: (arg, conv) for k, (arg, conv) in OFFICIAL_TO_MODEL.items()}
    keys.update({k: (arg, None) for k, arg in _OUR_RECIPE_KEYS.items()})
    from_keys = spec.name is None  # "sdt": every key of the recipe describes the model, set or default
    for key, (arg, conv) in keys.items():
        if r.get(key) is None or not (from_keys or key in explicit):
            continue
        if arg not in accepted:
            if r[key] != SCHEMA.get(key, (None,))[0]:
                raise ValueError(f"recipe key {key!r} does not apply to {name!r} ({family(spec.family).title} "
                                 f"models have no {arg!r} argument)")
            continue
        value = r[key]
        spec.kwargs[arg] = conv(value) if conv is not None else (tuple(value) if isinstance(value, list) else value)
    return spec


def spec_from_checkpoint(meta: dict, source: str = "checkpoint") -> ModelSpec | None:
    """The model a checkpoint describes: ours record family, registry name and constructor arguments; official
    checkpoints carry their training ``args`` (V1: ``dim``, ``layer``, ...; V2: ``model``, ``time_steps``,
    ``nb_classes``, ``kd``; V3: ``model`` = ``Efficient_Spiking_Transformer_{t,s,m,l}``, ``input_size``). None if the
    file does not say."""
    if isinstance(meta.get("model_kwargs"), dict):
        fam = meta.get("family") or "sdt"
        kwargs = dict(meta["model_kwargs"])
        name = meta.get("arch") if is_registered(str(meta.get("arch"))) else None
        return ModelSpec(fam, _checked(fam, kwargs, source), name, source)
    args = meta.get("args")
    official_v2 = isinstance(args, dict) and str(args.get("model", "")).startswith("metaspikformer_")
    if official_v2:  # BICLab/Spike-Driven-Transformer-V2 main_finetune.py: args.model, time_steps, nb_classes, kd
        name = "sdt_v2_" + str(args["model"])[len("metaspikformer_"):]
        if not is_registered(name):
            raise ValueError(f"{source}: official V2 model {args['model']!r} is not one of ours "
                             f"(sdt_v2_8_384, sdt_v2_8_512, sdt_v2_8_768)")
        spec = spec_from_name(name)
        from ..config.official import official_value

        for key, arg in (("time_steps", "T"), ("nb_classes", "num_classes"), ("kd", "kd"), ("input_size", "img_size")):
            if args.get(key) is not None:  # typed strictly: "False" is not True, 2.7 is not 2
                spec.kwargs[arg] = official_value(key, args[key], bool if arg == "kd" else int,
                                                  f"{source}: official args")
        spec.source = source
        return spec
    official_v3 = isinstance(args, dict) and str(args.get("model", "")).startswith("Efficient_Spiking_Transformer_")
    if official_v3:  # BICLab/Spike-Driven-Transformer-V3 main_finetune.py: models.__dict__[args.model]()
        name = "sdt_v3_" + str(args["model"])[len("Efficient_Spiking_Transformer_"):]
        if not is_registered(name):
            raise ValueError(f"{source}: official V3 model {args['model']!r} is not one of ours "
                             f"(Efficient_Spiking_Transformer_t, _s, _m, _l)")
        spec = spec_from_name(name)
        # the official script builds the model with its defaults (1000 classes, whatever nb_classes says)
        if args.get("input_size") is not None:
            spec.kwargs["img_size"] = int(args["input_size"])
        spec.source = source
        return spec
    if isinstance(args, dict) and "dim" in args:
        from ..config.official import model_kwargs_from_official

        return ModelSpec("sdt", model_kwargs_from_official({k: v for k, v in args.items() if "-" not in str(k)}),
                         None, source)
    return None


def instantiate(spec: ModelSpec) -> nn.Module:
    from ..bounds import check_fits_in_memory, model_param_bytes

    cls = family(spec.family).cls
    check_fits_in_memory(model_param_bytes(spec.kwargs), f"the model {spec.name or spec.source or spec.family} "
                         f"(embed_dim={spec.kwargs.get('embed_dim')}, depth={spec.kwargs.get('depth')})")
    model = cls(**spec.kwargs)
    model.model_name = spec.name or (cls.config_name(model) if hasattr(cls, "config_name") else spec.source)
    model.model_family = spec.family
    model.model_kwargs = dict(spec.kwargs)
    return model


def build_model(name: str | None = None, *, config: str | os.PathLike | None = None, recipe=None,
                checkpoint: str | os.PathLike | None = None, use_ema: bool = False, overrides: dict | None = None,
                strict: bool = True) -> tuple[nn.Module, dict]:
    """``(model, checkpoint meta)``; the source is the first of ``name``, ``config`` (YAML: an official
    ``conf/**/*.yml`` or one of our recipes, by path or name), ``recipe`` (a resolved recipe) and the model the
    ``checkpoint`` describes. ``overrides`` replace constructor arguments. With ``checkpoint``, its weights are
    loaded (strictly unless ``strict=False``); the file is read once. ``meta`` is ``{}`` without a checkpoint.
    """
    from ..checkpoint import load_checkpoint, load_state_into_model

    overrides = dict(overrides or {})
    sd, meta = load_checkpoint(checkpoint, use_ema=use_ema) if checkpoint else (None, {})
    if name:
        spec = spec_from_name(name, **overrides)
    elif config is not None or recipe is not None:
        if recipe is None:
            from ..training.recipe import resolve_recipe

            recipe = resolve_recipe(config)
        spec = spec_from_recipe(recipe)
        spec.kwargs.update(_checked(spec.family, overrides, spec.name or "the recipe's model"))
    elif checkpoint:
        spec = spec_from_checkpoint(meta, Path(checkpoint).name)
        if spec is None:
            raise ValueError(f"{checkpoint} does not say which model it holds (no model_kwargs: not written by "
                             f"spikedriven train); pass --model NAME or --config YAML")
        spec.kwargs.update(_checked(spec.family, overrides, str(checkpoint)))
    else:
        raise ValueError("build_model needs a model name, a config, a recipe or a checkpoint")
    model = instantiate(spec)
    if checkpoint:
        from .finetune import without_classifier

        sd, note = without_classifier(model, sd, str(checkpoint))
        load_state_into_model(model, sd, strict=strict, source=str(checkpoint))
        if note:  # timm's convention: another number of classes keeps the backbone, says so
            logging.getLogger("spikedriven").warning(note)
    return model, meta


def create_model(name: str, checkpoint_path: str | os.PathLike | None = None, strict: bool = True,
                 pretrained: bool = False, **overrides) -> nn.Module:
    """Build a registered model; keyword overrides replace config values (e.g. ``T=8, num_classes=100``).

    ``checkpoint_path`` loads weights (ours, official ``.pth.tar``/``.pth`` or ``.safetensors``) strictly; a
    checkpoint trained for another number of classes than ``num_classes`` loads all but the classifier, which
    stays freshly initialised (logged in one line, as timm does).
    ``pretrained=True`` needs ``checkpoint_path``: no weights are bundled or downloaded.
    """
    if pretrained and checkpoint_path is None:
        raise ValueError(f"no pretrained weights are bundled with spikedriven and none are downloaded; pass "
                         f"checkpoint_path=<file> to load weights into {name!r}")
    return build_model(name, checkpoint=checkpoint_path, overrides=overrides, strict=strict)[0]
