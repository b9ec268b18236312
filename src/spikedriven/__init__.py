"""spikedriven: the Spike-driven Transformer (Yao et al., NeurIPS 2023), faithful to the official code."""
from .model import SpikeDrivenTransformer, create_model, list_models, model_info, register_model
from .neuron import LIF, ParametricLIF

__version__ = "0.1.0"

__all__ = [
    "SpikeDrivenTransformer", "create_model", "list_models", "model_info", "register_model", "LIF", "ParametricLIF",
    "load_checkpoint", "save_safetensors", "verify_spike_driven", "__version__",
]


def __getattr__(name):  # lazy: keep `import spikedriven` light
    if name in ("load_checkpoint", "save_safetensors"):
        from . import checkpoint

        return getattr(checkpoint, name)
    if name == "verify_spike_driven":
        from .verify import verify_spike_driven

        return verify_spike_driven
    raise AttributeError(f"module 'spikedriven' has no attribute {name!r}")
