"""The decoded image index (`decode_images`) as plain files, loaded without unpickling:

    <path>/index.parquet   image_id, image_path (relative to the image root), in order
    <path>/pixels.npy      uint8 (N, H, W, 3), when images are decoded into memory
    <path>/meta.json       size, augmentation, and the image root's URL

The root's credentials are never written: lazy decoding from cloud storage reads them
from this entry's own `credentials:` (the same key as `raw_images`).
"""

from __future__ import annotations

import io
import json
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from kedro.io import AbstractDataset

from ..data.image_root import ImageRoot


class ImageIndexDataset(AbstractDataset[dict, dict]):
    def __init__(self, path: str, credentials: dict | None = None, metadata: dict[str, Any] | None = None):
        self._fs, self._path = fsspec.core.url_to_fs(path, **(credentials or {}))
        self._path = self._path.rstrip("/")
        self._credentials = dict(credentials or {})
        self.metadata = metadata

    def _file(self, name: str) -> str:
        return f"{self._path}/{name}"

    def load(self) -> dict:
        with self._fs.open(self._file("meta.json"), "r") as f:
            meta = json.load(f)
        with self._fs.open(self._file("index.parquet"), "rb") as f:
            index = pd.read_parquet(f)
        pixels = None
        if meta["in_memory"]:
            with self._fs.open(self._file("pixels.npy"), "rb") as f:
                pixels = np.load(io.BytesIO(f.read()), allow_pickle=False)
        root = ImageRoot(meta["root"], self._credentials) if meta.get("root") else None
        return {
            "image_ids": index["image_id"].tolist(),
            "paths": index["image_path"].tolist(),
            "size": int(meta["size"]),
            "pixels": pixels,
            "augment": meta["augment"],
            "root": root,
        }

    def save(self, data: dict) -> None:
        self._fs.makedirs(self._path, exist_ok=True)
        if self._fs.exists(self._file("pixels.npy")):
            self._fs.rm(self._file("pixels.npy"))  # a lazy index must not load stale pixels
        index = pd.DataFrame({"image_id": data["image_ids"], "image_path": data["paths"]}, dtype="string")
        with self._fs.open(self._file("index.parquet"), "wb") as f:
            index.to_parquet(f, index=False)
        if data["pixels"] is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(data["pixels"]), allow_pickle=False)
            with self._fs.open(self._file("pixels.npy"), "wb") as f:
                f.write(buffer.getvalue())
        root = data.get("root")
        meta = {
            "size": int(data["size"]),
            "augment": data["augment"],
            "in_memory": data["pixels"] is not None,
            "root": root.url if root is not None else None,
        }
        with self._fs.open(self._file("meta.json"), "w") as f:
            json.dump(meta, f, indent=1)

    def _exists(self) -> bool:
        return self._fs.exists(self._file("meta.json"))

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "protocol": self._fs.protocol}
