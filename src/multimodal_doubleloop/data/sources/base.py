"""What every source shares: reading a partition of `raw_annotations`."""

from __future__ import annotations


def partition(annotations, name: str, source: str, role: str):
    """The loaded partition `name` of `raw_annotations`, or an error naming what exists."""
    if not isinstance(annotations, dict):
        raise TypeError(
            f"{source}: raw_annotations loaded a {type(annotations).__name__}; declare it as a "
            "partitions.PartitionedDataset over the folder of annotation files (see conf/README.md)"
        )
    if name not in annotations:
        raise FileNotFoundError(
            f"{source}: raw_annotations has no partition {name!r} ({role}); it has "
            f"{sorted(annotations)[:10]}. Point raw_annotations at the folder that holds it, "
            f"or set ingestion.{source}.splits"
        )
    loaded = annotations[name]
    return loaded() if callable(loaded) else loaded
