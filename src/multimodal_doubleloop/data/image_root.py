"""A folder of image files on any fsspec filesystem (local, `s3://`, `gs://`, `abfs://`,
`memory://`): the one way ingestion, decoding and training read images.

The sample table stores each image's path relative to its root, so the table moves
with the data. An `ImageRoot` pickles as its URL and options (DataLoader workers
rebuild the filesystem), and opening a missing file names the full location.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO

import fsspec


@dataclass(frozen=True)
class ImageRoot:
    url: str  # the root folder, an fsspec URL or a local path
    # credentials and fs_args: never shown, and two roots at one URL are the same folder
    storage_options: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def _fs_and_path(self):
        fs, path = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs, path.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_and_path[0]

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` (a path under the root, `/`-separated)."""
        return f"{self._fs_and_path[1]}/{relative}" if relative else self._fs_and_path[1]

    def where(self, relative: str) -> str:
        """`relative` as a location a user can find: the root's URL joined with it."""
        return f"{self.url.rstrip('/')}/{relative}" if relative else self.url

    def open(self, relative: str) -> IO[bytes]:
        try:
            return self.fs.open(self.path(relative), "rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"image file not found: {self.where(relative)}") from exc

    def isfile(self, relative: str) -> bool:
        return self.fs.isfile(self.path(relative))

    def isdir(self, relative: str = "") -> bool:
        return self.fs.isdir(self.path(relative))

    def files(self, relative: str = "") -> list[str]:
        """Every file under `relative`, as sorted paths relative to the root."""
        base = self._fs_and_path[1]
        found = self.fs.find(self.path(relative))
        return sorted(p[len(base) + 1 :] if base else p for p in found)

    def __getstate__(self) -> dict:  # the filesystem is rebuilt where it is unpickled
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict) -> None:
        object.__setattr__(self, "url", state["url"])
        object.__setattr__(self, "storage_options", state["storage_options"])


EMBEDDED_COLUMN = "image_bytes"  # a sample table column holding each row's image file bytes
EMBEDDED_PREFIX = "embedded/"  # image_path of an embedded image: embedded/<sha256 of its bytes>


class EmbeddedImages:
    """Image files carried in the sample table itself (a table source whose image column
    holds the bytes): the same `open`/`where`/`isfile` as an `ImageRoot`, keyed by the
    rows' `image_path`, so screening, decoding and example requests read them alike."""

    url = "embedded:samples"

    def __init__(self, files: Mapping[str, bytes]):
        self._files = dict(files)

    def open(self, relative: str) -> IO[bytes]:
        if relative not in self._files:
            raise FileNotFoundError(f"image file not found: {self.where(relative)}")
        return io.BytesIO(self._files[relative])

    def where(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def isfile(self, relative: str) -> bool:
        return relative in self._files

    def isdir(self, relative: str = "") -> bool:
        return not relative


def images_of(samples, root: ImageRoot) -> ImageRoot | EmbeddedImages:
    """Where a sample table's images are: in the table (its `image_bytes` column) or
    under `root` (the catalog's `raw_images`)."""
    if EMBEDDED_COLUMN not in samples.columns:
        return root
    unique = samples.drop_duplicates("image_path")
    return EmbeddedImages(dict(zip(unique["image_path"], unique[EMBEDDED_COLUMN], strict=True)))
