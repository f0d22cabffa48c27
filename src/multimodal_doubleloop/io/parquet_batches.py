"""A Parquet table read and written in batches, so a node can stream it with memory
flat in the number of rows.

Loading a file (or a folder of part files) returns an iterator of DataFrames of at
most `batch_rows` rows, read one batch at a time (`pyarrow.parquet.ParquetFile.iter_batches`).
Saving writes one part file per call, `part-00000.parquet`, `part-00001.parquet`, ...
under `filepath` (a folder), so a generator node's outputs land as they are yielded;
the first save of a dataset instance (one `kedro run`) removes the parts an earlier
run left. `pandas.read_parquet(folder)` reads the whole result back.

    predictions:
      type: multimodal_doubleloop.io.ParquetBatchesDataset
      filepath: data/07_model_output/predictions   # a folder (or s3://..., with credentials)
      batch_rows: 256
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError


class ParquetBatchesDataset(AbstractDataset[pd.DataFrame, Iterator[pd.DataFrame]]):
    def __init__(
        self,
        filepath: str,
        batch_rows: int = 256,
        credentials: dict | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        if batch_rows < 1:
            raise DatasetError(f"ParquetBatchesDataset {filepath}: batch_rows={batch_rows} must be >= 1")
        self._fs, self._path = fsspec.core.url_to_fs(filepath, **(credentials or {}))
        self._path = self._path.rstrip("/")
        self._batch_rows = batch_rows
        self._parts_written = 0
        self.metadata = metadata

    def _files(self) -> list[str]:
        if self._fs.isdir(self._path):
            return sorted(p for p in self._fs.ls(self._path, detail=False) if p.endswith(".parquet"))
        return [self._path]

    def load(self) -> Iterator[pd.DataFrame]:
        if not self._fs.exists(self._path):
            raise DatasetError(f"no Parquet file or folder at {self._path}")
        return self._batches(self._files())

    def _batches(self, files: list[str]) -> Iterator[pd.DataFrame]:
        for path in files:
            with self._fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=self._batch_rows):
                    yield batch.to_pandas()

    def save(self, data: pd.DataFrame) -> None:
        if not isinstance(data, pd.DataFrame):
            raise DatasetError(f"ParquetBatchesDataset {self._path} saves DataFrames, got {type(data).__name__}")
        if self._parts_written == 0:  # this run's first batch: the folder holds only this run's parts
            if self._fs.isfile(self._path):
                self._fs.rm(self._path)
            elif self._fs.isdir(self._path):
                for old in self._files():
                    self._fs.rm(old)
            self._fs.makedirs(self._path, exist_ok=True)
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(data, preserve_index=False), buffer)
        with self._fs.open(f"{self._path}/part-{self._parts_written:05d}.parquet", "wb") as f:
            f.write(buffer.getvalue())
        self._parts_written += 1

    def _exists(self) -> bool:
        return self._fs.exists(self._path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._path, "batch_rows": self._batch_rows, "protocol": self._fs.protocol}
