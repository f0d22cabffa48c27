"""A folder of JSON records, one file per key: saved one at a time, as they come.

`save({name: record | callable})` writes `<path>/<name>.json` for each entry, calling
a callable first (Kedro's lazy saving: a node can return records that are computed
only as they are written, so a long node's results land one by one, and a kill
loses at most the one being computed). Existing files of other names are kept.
`load()` returns every record in the folder, `{}` for an empty or missing folder
(unlike `PartitionedDataset`, which refuses one), so a node can skip what is done.
Paths are fsspec URLs (local, `memory://`, `s3://` with `credentials`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fsspec
from kedro.io import AbstractDataset


class JSONFolderDataset(AbstractDataset[dict, dict]):
    def __init__(self, path: str, credentials: dict | None = None, metadata: dict[str, Any] | None = None):
        self._fs, self._path = fsspec.core.url_to_fs(path, **(credentials or {}))
        self._path = self._path.rstrip("/")
        self.metadata = metadata

    def _file(self, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"record name {name!r} must be a plain file name")
        return f"{self._path}/{name}.json"

    def load(self) -> dict[str, dict]:
        if not self._fs.isdir(self._path):
            return {}
        records = {}
        for file in sorted(self._fs.glob(f"{self._path}/*.json")):
            name = file.rsplit("/", 1)[-1].removesuffix(".json")
            with self._fs.open(file, "r") as f:
                records[name] = json.load(f)
        return records

    def save(self, data: dict[str, dict | Callable[[], dict]]) -> None:
        self._fs.makedirs(self._path, exist_ok=True)
        for name, record in data.items():
            record = record() if callable(record) else record
            tmp = self._file(name) + ".tmp"
            with self._fs.open(tmp, "w") as f:
                json.dump(record, f, indent=1)
            self._fs.mv(tmp, self._file(name))  # a record is whole or absent

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "protocol": self._fs.protocol}
