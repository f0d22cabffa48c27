"""Training: the multimodal model trained on the encoded samples."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
