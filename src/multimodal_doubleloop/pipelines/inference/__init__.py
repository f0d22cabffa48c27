"""Inference: base64 image + text requests -> answers, served as one MLflow model."""

from .mlflow_model import log_model_kwargs
from .pipeline import create_batch_pipeline, create_packaging_pipeline, create_pipeline

__all__ = ["create_batch_pipeline", "create_packaging_pipeline", "create_pipeline", "log_model_kwargs"]
