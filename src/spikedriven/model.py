"""Former home of the V1 model and the registry, kept so that existing imports keep working.

New code: ``spikedriven.models`` (registry, factory, one file per family) and ``spikedriven.probe``.
"""
from .models.factory import create_model
from .models.registry import ModelInfo, list_models, model_info, register_model
from .models.sdt import MS_Block_Conv, MS_MLP_Conv, MS_SPS, SpikeDrivenTransformer
from .probe import bn_is_calibrated, calibrate_bn

__all__ = ["SpikeDrivenTransformer", "create_model", "list_models", "model_info", "ModelInfo", "register_model",
           "bn_is_calibrated", "calibrate_bn", "MS_SPS", "MS_MLP_Conv", "MS_Block_Conv"]
