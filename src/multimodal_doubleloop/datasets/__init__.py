"""Kedro datasets of this project (catalog I/O that kedro-datasets lacks)."""

from .torch_model import TorchModelDataset

__all__ = ["TorchModelDataset"]
