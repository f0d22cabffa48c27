"""Evaluation: test metrics, per question type, and a confusion matrix."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
