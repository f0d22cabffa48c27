"""Catalog I/O that kedro-datasets lacks, and the project's Kedro hooks."""

from .json_folder import JSONFolderDataset
from .torch_model import TorchModelDataset

__all__ = ["JSONFolderDataset", "TorchModelDataset"]
