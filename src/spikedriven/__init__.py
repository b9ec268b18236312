"""spikedriven: the Spike-driven Transformer family (Yao et al.), faithful to the official code.

``import spikedriven`` is light (no torch yet): the names below load on first use, and so do the submodules
(``spikedriven.checkpoint``, ``spikedriven.energy``, ...). Once ``timm`` is imported (before or after this
package), every registered model is also a timm model: ``timm.create_model("sdt_cifar10_2_256")``.
"""
from __future__ import annotations

from importlib import import_module

from ._version import __version__

_NAMES = {
    "SpikeDrivenTransformer": "models", "MetaSpikeFormer": "models", "ESpikeFormer": "models", "create_model": "models", "build_model": "models", "list_models": "models",
    "list_families": "models", "model_info": "models", "register_model": "models", "ModelInfo": "models",
    "LIF": "neuron", "IntegerNeuron": "neuron", "ParametricLIF": "neuron", "set_backend": "neuron", "neurons": "neuron",
    "load_checkpoint": "checkpoint", "save_safetensors": "checkpoint", "verify_spike_driven": "verify",
    "prepare_inference": "inference",
}
_SUBMODULES = {"checkpoint", "cli", "config", "data", "energy", "engine", "inference", "kernels", "layers", "model",
               "models", "neuron", "probe", "surrogate", "train", "training", "verify", "viz", "timm_support"}

__all__ = ["__version__", *_NAMES]


def __getattr__(name):  # PEP 562: load on first use
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'spikedriven' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | _SUBMODULES)


import_module(".timm_support", __name__).install()  # light: registers with timm when (or once) timm is imported
