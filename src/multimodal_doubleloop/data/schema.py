"""The canonical sample table every ingestion source produces.

One row per (image, text) sample. Captioning sources put the caption in `text`
and leave `answer` empty; classification sources put the label in `answer`.
"""

from __future__ import annotations

import pandas as pd

CANONICAL_COLUMNS = {
    "sample_id": "string",  # unique per row
    "image_id": "string",  # unique per image; image-major batching groups on it
    "image_path": "string",  # file the image is decoded from
    "text": "string",  # question, caption or class prompt
    "answer": "string",  # target label ("" where the task has none)
    "split": "string",  # train | val | test
    "question_type": "string",  # e.g. yes/no, color, shape, caption, class
    "source": "string",  # which ingestion source produced the row
}
SPLITS = ("train", "val", "test")


class SchemaError(ValueError):
    """The table does not have the canonical schema; the message says what to fix."""


def validate_table(table: pd.DataFrame) -> pd.DataFrame:
    """Check columns, types, uniqueness and splits; return the table with canonical dtypes."""
    missing = sorted(set(CANONICAL_COLUMNS) - set(table.columns))
    if missing:
        raise SchemaError(f"sample table lacks column(s) {missing}; it has {list(table.columns)}")
    for column in ("sample_id", "image_id", "image_path", "text", "split"):
        nulls = int(table[column].isna().sum())
        if nulls:
            raise SchemaError(f"column {column!r} has {nulls} empty value(s)")
    bad_splits = sorted(set(table["split"].unique()) - set(SPLITS))
    if bad_splits:
        raise SchemaError(f"unknown split value(s) {bad_splits}; use {SPLITS}")
    duplicated = table["sample_id"][table["sample_id"].duplicated()]
    if len(duplicated):
        raise SchemaError(
            f"{len(duplicated)} duplicated sample_id(s), e.g. {duplicated.iloc[0]!r}"
        )
    paths_per_image = table.groupby("image_id")["image_path"].nunique()
    if (paths_per_image > 1).any():
        raise SchemaError(
            f"image_id(s) {list(paths_per_image[paths_per_image > 1].index[:3])} "
            "point to more than one image_path"
        )
    if not (table["split"] == "train").any():
        raise SchemaError("no 'train' rows: the tokenizer and model need training data")
    out = table.astype({c: t for c, t in CANONICAL_COLUMNS.items()})
    extra = [c for c in table.columns if c not in CANONICAL_COLUMNS]
    return out[list(CANONICAL_COLUMNS) + extra].reset_index(drop=True)


# What identifies a table's content for resuming: two tables that agree on these train
# on the same thing (same rows, images, targets), whatever else differs.
IDENTITY_COLUMNS = ("sample_id", "image_id", "image_path", "text", "answer", "split", "source")


def table_fingerprint(table: pd.DataFrame) -> str:
    """SHA-256 of the table's identity columns, row by row in order."""
    import hashlib

    hashed = pd.util.hash_pandas_object(table[list(IDENTITY_COLUMNS)].astype(str), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()
