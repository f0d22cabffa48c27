"""Validation split by image: every text of a held-out image leaves training with it."""

from __future__ import annotations

import numpy as np
import pandas as pd


def require_test_rows(samples: pd.DataFrame, purpose: str) -> None:
    """Raise, naming the source and what to set, when `samples` has no 'test' rows."""
    if (samples["split"] == "test").any():
        return
    source = ", ".join(sorted(set(samples["source"]))) if "source" in samples and len(samples) else "the source"
    raise ValueError(
        f"the sample table has no 'test' rows {purpose} (source {source}; splits "
        f"{samples['split'].value_counts().to_dict()}): give the data a test split, i.e. map one in "
        "ingestion.<source>.splits (image_folder reads <root>/val as test by default), or for a table "
        "with ingestion.table.split, rows whose split is 'test'"
    )


def hold_out_val_images(table: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Move `val_fraction` of the `train` images (all their rows) to split `val`, in place."""
    if val_fraction <= 0:
        return table
    train_images = np.sort(table.loc[table["split"] == "train", "image_id"].unique())
    if len(train_images) == 0:
        return table
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_fraction * len(train_images))))
    val_images = set(rng.choice(train_images, size=n_val, replace=False))
    table.loc[table["image_id"].isin(val_images), "split"] = "val"
    return table
