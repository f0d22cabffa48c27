"""Tokenization: train a WordPiece tokenizer, encode texts, build the answer vocabulary."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
