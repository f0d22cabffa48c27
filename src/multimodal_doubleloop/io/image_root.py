"""Raw images as a catalog entry: a folder on any fsspec filesystem, with credentials.

    raw_images:
      type: multimodal_doubleloop.io.ImageRootDataset
      path: s3://my-bucket/coco        # or a local folder
      credentials: my_s3               # a key of conf/local/credentials.yml

Loading lists and reads nothing: it returns an `ImageRoot` handle, and ingestion reads
only the images the run uses. The dataset is read-only.
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from ..data.image_root import ImageRoot


class ImageRootDataset(AbstractDataset[None, ImageRoot]):
    def __init__(
        self,
        path: str,
        credentials: dict | None = None,
        fs_args: dict | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        self._root = ImageRoot(path, {**(fs_args or {}), **(credentials or {})})
        self.metadata = metadata

    def load(self) -> ImageRoot:
        if not self._root.isdir():
            raise DatasetError(
                f"image root {self._root.url!r} is not a folder; point this catalog entry's "
                "`path` at the folder that holds the images"
            )
        return self._root

    def save(self, data: None) -> None:
        raise DatasetError(f"ImageRootDataset {self._root.url!r} is read-only: it declares raw images")

    def _exists(self) -> bool:
        return self._root.isdir()

    def _describe(self) -> dict[str, Any]:
        return {"path": self._root.url}
