"""The model registry (timm-style): model families and named configurations with their metadata.

A *family* is a model class (``SpikeDrivenTransformer``, ``MetaSpikeFormer``) with its paper and official code;
a *model* is a named configuration of a family (constructor keyword arguments) with what we know about it:
dataset, official config file, official parameter count, paper accuracy and energy, our training recipe.
Each family file (``models/sdt.py``, ``models/sdt_v2.py``) registers itself and its zoo at import.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelFamily", "ModelInfo", "register_family", "register_model", "family", "list_families",
           "model_info", "list_models", "is_registered"]


@dataclass(frozen=True)
class ModelFamily:
    name: str  # "sdt", "sdt_v2"
    cls: type
    title: str
    paper: str = ""
    official_code: str = ""
    first_conv: str = ""  # state_dict prefix of the encoding conv (timm pretrained_cfg)
    classifier: str | tuple[str, ...] = "head"  # classifier module(s), timm style: dropped when fine-tuning


@dataclass(frozen=True)
class ModelInfo:
    name: str
    kwargs: dict[str, Any]
    dataset: str
    official_config: str | None = None  # where the configuration comes from in the official repository
    params: int | None = None  # official parameter count (checked in the tests)
    paper_top1: float | None = None
    paper_energy_mj: float | None = None
    eval_img_size: int | None = None
    notes: str = ""
    recipe: str | None = None  # our training recipe under configs/
    extra: dict[str, Any] = field(default_factory=dict)
    family: str = "sdt"

    @property
    def cls(self) -> type:
        return family(self.family).cls

    def pretrained_cfg(self) -> dict[str, Any]:
        """timm-style metadata: what inputs the model expects (size, normalisation, classes) and where it is from."""
        from ..data.info import DATASET_INFO

        k, fam = self.full_kwargs(), family(self.family)
        data = DATASET_INFO.get(self.dataset, {})
        cin, size = int(k["in_channels"]), int(k["img_size"])
        mean = tuple(data.get("mean") or (0.5,) * cin) if not data.get("is_event") else (0.0,) * cin
        std = tuple(data.get("std") or (0.5,) * cin) if not data.get("is_event") else (1.0,) * cin
        cfg = dict(input_size=(cin, size, size), num_classes=int(k["num_classes"]), mean=mean, std=std,
                   crop_pct=self.extra.get("crop_pct", 1.0 if size <= 64 else 0.875),
                   interpolation=self.extra.get("interpolation", "bicubic"), first_conv=fam.first_conv,
                   classifier=fam.classifier, origin_url=fam.official_code or None, paper_name=fam.paper or None,
                   description=self.notes or None, architecture=self.name)
        if self.eval_img_size:
            cfg["test_input_size"] = (cin, self.eval_img_size, self.eval_img_size)
        return cfg

    def full_kwargs(self) -> dict[str, Any]:
        """Every constructor argument: the family's defaults updated with this configuration's."""
        params = inspect.signature(self.cls.__init__).parameters
        out = {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}
        out.update(self.kwargs)
        return out


_FAMILIES: dict[str, ModelFamily] = {}
_MODELS: dict[str, ModelInfo] = {}


def register_family(fam: ModelFamily) -> ModelFamily:
    if fam.name in _FAMILIES:
        raise ValueError(f"model family {fam.name!r} is already registered")
    _FAMILIES[fam.name] = fam
    return fam


def register_model(info: ModelInfo) -> ModelInfo:
    if info.name in _MODELS or info.name in _FAMILIES:
        raise ValueError(f"model {info.name!r} is already registered")
    if info.family not in _FAMILIES:
        raise ValueError(f"model {info.name!r}: unknown family {info.family!r} (known: {', '.join(_FAMILIES)})")
    _MODELS[info.name] = info
    return info


def family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(_FAMILIES)}") from None


def list_families() -> list[str]:
    return list(_FAMILIES)


def is_registered(name: str) -> bool:
    return name in _MODELS


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching ``pattern``: a glob (``sdt_cifar*``) or, without wildcards, a substring
    (``cifar``), optionally of one family."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return sorted(n for n, i in _MODELS.items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or i.family == family))


def model_info(name: str) -> ModelInfo:
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} Known models: {', '.join(list_models())}") from None
