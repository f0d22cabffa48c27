"""Catalog I/O that kedro-datasets lacks, and the project's Kedro hooks."""

from .torch_model import TorchModelDataset

__all__ = ["TorchModelDataset"]
