"""Catalog I/O that kedro-datasets lacks, and the project's Kedro hooks."""

from .image_index import ImageIndexDataset
from .image_root import ImageRootDataset
from .initial_weights import InitialWeightsDataset
from .json_folder import JSONFolderDataset
from .mlflow_metrics import MlflowMetricsBatchDataset
from .mlflow_model_artifact import MlflowModelArtifactDataset
from .npz import NpzDataset
from .parquet_batches import ParquetBatchesDataset
from .serving_model import ServingModelDataset
from .torch_model import TorchModelDataset

__all__ = [
    "ImageIndexDataset",
    "ImageRootDataset",
    "InitialWeightsDataset",
    "JSONFolderDataset",
    "MlflowMetricsBatchDataset",
    "MlflowModelArtifactDataset",
    "NpzDataset",
    "ParquetBatchesDataset",
    "ServingModelDataset",
    "TorchModelDataset",
]
