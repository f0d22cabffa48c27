"""Ingestion sources. Each reads loaded catalog data into the canonical table
(`data.schema`) and the records it could not read (`data.quality`):

    read(annotations, images, cfg) -> (table, problems)

`annotations` is what the catalog's `raw_annotations` entry loads (a
`PartitionedDataset`'s {name: loader}, one partition per annotation file or table),
`images` the `raw_images` root (`data.image_root.ImageRoot`), `cfg` the
`IngestionConfig`. Image paths in the table are relative to that root. A source may
also define `derive(table, images, columns, caption_rows)`: the columns and
description rows the active tasks ask of it. A new source is one module and one line
in `SOURCES`.
"""

from __future__ import annotations

from types import ModuleType

from . import coco_captions, easy_vqa, image_folder, table, vqa_v2
from .base import partition

__all__ = ["SOURCES", "partition"]

SOURCES: dict[str, ModuleType] = {
    "easy_vqa": easy_vqa,
    "coco_captions": coco_captions,
    "image_folder": image_folder,
    "table": table,
    "vqa_v2": vqa_v2,
}
