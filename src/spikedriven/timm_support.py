"""Every registered model as a timm model: ``timm.create_model("sdt_cifar10_2_256")``, ``timm.list_models("sdt*")``,
with timm ``pretrained_cfg`` metadata (input size, mean/std, classes, first conv, classifier).

Registration needs timm and torch, so it is deferred until timm is imported: :func:`install` registers at once
when timm is already loaded, else it arranges for registration right after ``import timm`` finishes.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__all__ = ["install", "register_all", "default_cfgs"]

default_cfgs: dict[str, dict] = {}  # what timm's register_model reads from this module
_done = False


def _entrypoint(name: str):
    def fn(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        from .models.factory import create_model
        from .models.registry import model_info

        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # timm passes unset options as None
        model = create_model(name, pretrained=pretrained, **kwargs)
        cfg = dict(model_info(name).pretrained_cfg())
        cfg.update(pretrained_cfg_overlay or {})
        cfg["num_classes"] = getattr(model, "num_classes", cfg["num_classes"])
        model.pretrained_cfg = model.default_cfg = cfg
        return model

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"spikedriven model {name!r} (see `spikedriven models`)."
    return fn


def register_all() -> None:
    """Register every spikedriven model with timm (once)."""
    global _done
    if _done:
        return
    from timm.models import register_model

    from .models.registry import list_models, model_info

    for name in list_models():
        default_cfgs[name] = model_info(name).pretrained_cfg()
        register_model(_entrypoint(name))
    _done = True


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps timm's loader so that registration runs right after timm's module executes."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            register_all()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if "timm" in sys.modules:
        register_all()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
