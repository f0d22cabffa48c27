"""A table of (image, text, answer) rows: the commonest shape of a team's own data.

The catalog's `raw_annotations` is a `PartitionedDataset` of CSV, JSON-lines or
Parquet files (its `dataset:` type decides the format; see `conf/table/catalog.yml`),
`raw_images` the folder the image paths are relative to. Column names are mapped in
`ingestion.table`. Splits come from a split column, or one partition per split.

One canonical row per table row: `text` and `answer` from their columns,
`question_type` is `ingestion.table.text_kind` ("question": the text asks about the
image; "caption": it describes it, for retrieval and captioning). Optional columns
are kept for tasks: `labels` (multi-label, a list or "a|b" string, joined with "|")
and `target` (a number, for regression).

With `ingestion.table.image_bytes: true` the image column holds each image file's
bytes (a Parquet binary column, or base64 text in CSV and JSON lines) instead of a
path: the table keeps them in an `image_bytes` column, each image's path becomes
`embedded/<sha256 of its bytes>` (identical images are one image), and `raw_images`
is not read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..image_root import EMBEDDED_COLUMN, EMBEDDED_PREFIX, ImageRoot
from ..quality import problems_frame
from ..schema import SPLITS
from ..splits import hold_out_val_images
from .base import partition

logger = logging.getLogger(__name__)

SOURCE = "table"
TEXT_KINDS = ("question", "caption")
LABEL_SEPARATOR = "|"


@dataclass
class TableConfig:
    image: str = "image"  # column: image path relative to raw_images (or its bytes: image_bytes)
    image_bytes: bool = False  # the image column holds the file's bytes (binary, or base64 text)
    text: str = "text"  # column: the question or caption
    answer: str = "answer"  # column: the answer or class; "" = none (retrieval, captioning)
    split: str = ""  # column of train | val | test; "" = `splits` names a partition per split
    # canonical split -> partition (a file name without its suffix), when `split` is ""
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    labels: str = ""  # column: several labels per row (list, or "a|b"); "" = none
    target: str = ""  # column: a number per row (regression); "" = none
    id: str = ""  # column: a unique row id; "" = <partition>/<row number>
    text_kind: str = "question"  # question | caption (what the text is to the image)

    def __post_init__(self):
        if not self.image or not self.text:
            raise ValueError("ingestion.table.image and ingestion.table.text must name columns")
        if self.text_kind not in TEXT_KINDS:
            raise ValueError(f"ingestion.table.text_kind={self.text_kind!r}: use one of {TEXT_KINDS}")
        bad = sorted(set(self.splits) - set(SPLITS))
        if not self.split and (bad or "train" not in self.splits):
            raise ValueError(
                f"ingestion.table.splits keys {sorted(self.splits)} must include 'train' and be "
                f"among {SPLITS} (bad: {bad}), or set ingestion.table.split to a split column"
            )


def _labels(values: pd.Series) -> pd.Series:
    """Lists (or "a|b" strings) as "a|b" strings; missing = ""."""

    def join(value) -> str:
        if isinstance(value, list | tuple | np.ndarray):
            return LABEL_SEPARATOR.join(str(v) for v in value if str(v))
        return "" if pd.isna(value) else str(value)

    return values.map(join)


def _image_bytes(value, name: str, row) -> bytes:
    """One cell of an image-bytes column: raw bytes, or base64 text (a `data:` URL too)."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
        try:
            data = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                f"table partition {name!r} row {row}: the image column holds text that is not base64 "
                f"({exc}); with ingestion.table.image_bytes the column holds the image file's bytes"
            ) from exc
    else:
        data = b""
    if not data:
        raise ValueError(
            f"table partition {name!r} row {row}: empty image bytes; with ingestion.table.image_bytes "
            "every row needs its image file's bytes (or set image_bytes: false for a path column)"
        )
    return data


def _image_columns(frame: pd.DataFrame, name: str, cfg: TableConfig) -> dict:
    """image_id, image_path (and image_bytes) of each row."""
    if not cfg.image_bytes:
        paths = frame[cfg.image].astype("string").str.lstrip("/")
        return {"image_id": "table/" + paths, "image_path": paths}
    data = [_image_bytes(v, name, row) for row, v in zip(frame.index, frame[cfg.image], strict=True)]
    paths = pd.Series([EMBEDDED_PREFIX + hashlib.sha256(d).hexdigest() for d in data], index=frame.index, dtype="string")
    return {"image_id": "table/" + paths, "image_path": paths, EMBEDDED_COLUMN: data}


def _rows(frame: pd.DataFrame, name: str, split, cfg: TableConfig) -> pd.DataFrame:
    mapped = {c: getattr(cfg, c) for c in ("image", "text", "answer", "split", "labels", "target", "id")}
    missing = sorted({c for c in mapped.values() if c} - set(frame.columns))
    if missing:
        raise ValueError(
            f"table partition {name!r} lacks column(s) {missing} (it has {list(frame.columns)}); "
            "map yours in ingestion.table (image, text, answer, split, labels, target, id)"
        )
    ids = frame[cfg.id].astype(str) if cfg.id else pd.Series(np.arange(len(frame)), index=frame.index).astype(str)
    images = _image_columns(frame, name, cfg)
    rows = pd.DataFrame(
        {
            "sample_id": f"table/{name}/" + ids,
            "image_id": images["image_id"],
            "image_path": images["image_path"],
            "text": frame[cfg.text].astype("string"),
            "answer": frame[cfg.answer].fillna("").astype(str) if cfg.answer else "",
            "split": frame[cfg.split].astype("string") if cfg.split else split,
            "question_type": cfg.text_kind,
            "source": SOURCE,
        }
    )
    if EMBEDDED_COLUMN in images:
        rows[EMBEDDED_COLUMN] = images[EMBEDDED_COLUMN]
    if cfg.labels:
        rows["labels"] = _labels(frame[cfg.labels])
    if cfg.target:
        rows["target"] = pd.to_numeric(frame[cfg.target], errors="raise").astype(float)
    return rows.reset_index(drop=True)


def read(annotations, images: ImageRoot, cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every table partition (or the configured one per split) as one canonical table."""
    table_cfg: TableConfig = cfg.table
    if table_cfg.split:
        names = sorted(annotations) if isinstance(annotations, dict) else []
        parts = [(name, None) for name in names]
    else:
        parts = [(name, split) for split, name in table_cfg.splits.items()]
    if not parts:
        raise FileNotFoundError("table: raw_annotations has no table files")
    frames = []
    for name, split in parts:
        frame = partition(annotations, name, SOURCE, f"split {split!r}" if split else "a table")
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"table partition {name!r} loaded a {type(frame).__name__}; use a pandas dataset type")
        frames.append(_rows(frame, name, split, table_cfg))
        logger.info("table %s: %d rows", name, len(frame))
    table = pd.concat(frames, ignore_index=True)
    if "val" not in set(table["split"]):
        hold_out_val_images(table, cfg.val_fraction, cfg.seed)
    return table, problems_frame()
