"""Model families, their registry and the one model factory.

    registry.py   families and named configurations with metadata (``list_models``, ``model_info``)
    factory.py    ``build_model`` / ``create_model``: registry name, YAML, recipe or checkpoint -> model
    sdt.py        Spike-driven Transformer (V1, NeurIPS 2023) and its zoo
    sdt_v2.py     Spike-driven Transformer V2 / Meta-SpikeFormer (ICLR 2024) and its zoo
    sdt_v3.py     Spike-driven Transformer V3 / E-SpikeFormer (TPAMI 2025) and its zoo

Importing this package registers every family.
"""
from . import sdt, sdt_v2, sdt_v3  # noqa: F401  (each registers its family and zoo)
from .factory import ModelSpec, build_model, create_model, instantiate, spec_from_checkpoint, spec_from_name
from .registry import (ModelFamily, ModelInfo, family, list_families, list_models, model_info, register_family,
                       register_model)
from .sdt import SpikeDrivenTransformer
from .sdt_v2 import MetaSpikeFormer
from .sdt_v3 import ESpikeFormer

__all__ = ["SpikeDrivenTransformer", "MetaSpikeFormer", "ESpikeFormer", "ModelFamily", "ModelInfo", "ModelSpec", "build_model", "create_model",
           "instantiate", "spec_from_checkpoint", "spec_from_name", "family", "list_families", "list_models",
           "model_info", "register_family", "register_model"]
