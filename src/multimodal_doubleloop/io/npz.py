"""A dict of numpy arrays as one `.npz` file, loaded without unpickling.

Strings are stored as fixed-width unicode arrays, never as objects, so `np.load` runs
with `allow_pickle=False`: loading the file can run no code. Paths are fsspec URLs.
"""

from __future__ import annotations

import io
from typing import Any

import fsspec
import numpy as np
from kedro.io import AbstractDataset, DatasetError


class NpzDataset(AbstractDataset[dict, dict]):
    def __init__(self, filepath: str, credentials: dict | None = None, metadata: dict[str, Any] | None = None):
        self._fs, self._path = fsspec.core.url_to_fs(filepath, **(credentials or {}))
        self.metadata = metadata

    def load(self) -> dict[str, np.ndarray]:
        with self._fs.open(self._path, "rb") as f:
            with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}

    def save(self, data: dict) -> None:
        arrays = {k: np.asarray(v) for k, v in data.items()}
        objects = [k for k, v in arrays.items() if v.dtype == object]
        if objects:
            raise DatasetError(f"NpzDataset {self._path}: array(s) {objects} hold Python objects; store numbers or strings")
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        self._fs.makedirs(self._fs._parent(self._path), exist_ok=True)
        with self._fs.open(self._path, "wb") as f:
            f.write(buffer.getvalue())

    def _exists(self) -> bool:
        return self._fs.exists(self._path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._path, "protocol": self._fs.protocol}
