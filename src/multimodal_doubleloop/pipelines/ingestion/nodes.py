"""Ingestion nodes: read a source into the canonical table; decode its images."""

from __future__ import annotations

import logging

import pandas as pd

from ...data.images import build_image_index
from ...data.schema import validate_table
from ...data.sources.easy_vqa import read_easy_vqa

logger = logging.getLogger(__name__)

SOURCES = ("easy_vqa",)


def ingest_samples(params: dict) -> pd.DataFrame:
    """Read the configured source into the canonical sample table and validate it."""
    source = params["source"]
    if source == "easy_vqa":
        table = read_easy_vqa(params["val_fraction"], params["seed"])
    else:
        raise ValueError(f"ingestion.source={source!r}: use one of {SOURCES}")
    limit = params.get("max_images_per_split")
    if limit:
        keep = table.drop_duplicates("image_id").groupby("split").head(limit)["image_id"]
        table = table[table["image_id"].isin(set(keep))]
    table = validate_table(table)
    logger.info(
        "Ingested %d samples over %d images: %s",
        len(table),
        table["image_id"].nunique(),
        table["split"].value_counts().to_dict(),
    )
    return table


def decode_images(samples: pd.DataFrame, params: dict) -> dict:
    """Unique images of the table; pixels decoded in memory when configured."""
    return build_image_index(samples, params["image_size"], params["in_memory_images"])
