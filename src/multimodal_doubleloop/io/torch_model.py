"""A trained model as one file: its config (plain JSON-able data), its state dict and,
optionally, the class names of its heads (`labels`: head -> list of names).

Saved with `torch.save`, loaded with `torch.load(weights_only=True)`, so loading
never unpickles code. Versioned like any Kedro dataset.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)


class TorchModelDataset(AbstractVersionedDataset[dict, dict]):
    """`{"config": dict, "state_dict": dict[str, Tensor]}` <-> a `.pt` file."""

    def __init__(self, filepath: str, version: Version | None = None, metadata: dict | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def load(self) -> dict:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or {"config", "state_dict"} - set(data):
            raise DatasetError(f"{path} is not a trained-model file (needs 'config' and 'state_dict')")
        return data

    def save(self, data: dict) -> None:
        if {"config", "state_dict"} - set(data):
            raise DatasetError("TorchModelDataset saves a dict with 'config' and 'state_dict'")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        self._fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
        with self._fs.open(path, "wb") as f:
            payload = {"config": data["config"], "state_dict": data["state_dict"]}
            if data.get("labels"):
                payload["labels"] = {k: list(map(str, v)) for k, v in data["labels"].items()}
            if data.get("request_limits"):  # a packaged serving model's limits: {name: int}
                payload["request_limits"] = {str(k): int(v) for k, v in data["request_limits"].items()}
            torch.save(payload, f)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "version": self._version}

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)
