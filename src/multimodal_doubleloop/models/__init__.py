"""Plain-PyTorch multimodal model parts. Imports nothing from Kedro or MLflow."""

from .fusion import Features, FusionConfig
from .heads import HeadConfig
from .multimodal import ModelConfig, MultimodalModel, build_model
from .presets import resolve_model_config
from .text import TextConfig, TextEncoder
from .vision import VisionConfig, VisionTransformer

__all__ = [
    "Features",
    "FusionConfig",
    "HeadConfig",
    "ModelConfig",
    "MultimodalModel",
    "TextConfig",
    "TextEncoder",
    "VisionConfig",
    "VisionTransformer",
    "build_model",
    "resolve_model_config",
]
