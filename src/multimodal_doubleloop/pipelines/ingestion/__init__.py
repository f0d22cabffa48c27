"""Ingestion: a data source -> the canonical sample table and its images."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
