"""Validation split by image: every text of a held-out image leaves training with it."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
