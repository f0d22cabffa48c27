"""COCO captions in their published layout, at COCO scale, without touching an image.

    raw_annotations: captions_<name>.json    {"images": [{id, file_name, width, height}],
                                              "annotations": [{id, image_id, caption}]}
    raw_images:      <name>/<file_name>      the images (decoded later, lazily)

(`raw_annotations` is a PartitionedDataset of JSON files over COCO's `annotations/`
folder, `raw_images` the folder that holds `train2017/`, `val2017/`; see
`conf/coco_captions/catalog.yml`.)

One canonical row per caption: `text` is the caption (whitespace collapsed), `answer`
is empty and `question_type` is "caption"; an image has several rows. The JSON is
parsed once and turned into columns with list comprehensions and vectorised pandas
(590k captions in seconds). Records that cannot become rows are returned as problems
(see `data.quality`), never dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..image_root import ImageRoot
from ..quality import problems_frame
from ..schema import SPLITS
from ..splits import hold_out_val_images
from .base import partition

logger = logging.getLogger(__name__)

SOURCE = "coco_captions"


@dataclass
class CocoCaptionsConfig:
    # canonical split -> COCO split name: reads the annotation partition captions_<name>
    # and images from <name>/ under raw_images. COCO's test set has no captions, so its val set is the
    # usual test split; `val` is carved from train by ingestion.val_fraction unless given.
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train2017", "test": "val2017"})

    def __post_init__(self):
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or "train" not in self.splits:
            raise ValueError(
                f"coco_captions.splits keys {sorted(self.splits)} must include 'train' and "
                f"be among {SPLITS} (bad: {bad})"
            )


def _join(prefix: str, values: pa.Array) -> pa.Array:
    """prefix + str(value), element-wise in Arrow (no Python loop over rows)."""
    return pc.binary_join_element_wise(prefix, pc.cast(values, pa.string()), "")


def _strings(values: pa.Array) -> pd.Series:
    return pd.Series(pd.arrays.ArrowStringArray(values))


def _first_wins(ids: pd.Series) -> np.ndarray:
    """True for the first occurrence of each id."""
    return ~ids.duplicated(keep="first").to_numpy()


class _Problems:
    """Malformed records of one annotation file, as quarantine rows."""

    def __init__(self, split: str):
        self.split, self.frames = split, []

    def add(self, mask: np.ndarray, reason: str, record, detail) -> None:
        """Record the masked entries; `record`/`detail` map the masked positions to strings."""
        if mask.any():
            where = np.flatnonzero(mask)
            self.frames.append(
                pd.DataFrame(
                    {
                        "source": SOURCE,
                        "split": self.split,
                        "reason": reason,
                        "record": [record(i) for i in where],
                        "image_path": "",
                        "detail": [detail(i) for i in where],
                    }
                )
            )


def _load_annotations(annotations, name: str, split: str) -> dict:
    data = partition(annotations, f"captions_{name}", SOURCE, f"split {split!r} -> {name!r}")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
        data.get("annotations"), list
    ):
        raise ValueError(f"captions_{name}.json: expected a JSON object with lists 'images' and 'annotations'")
    return data


def _field(entries: list, key: str) -> pd.Series:
    return pd.Series([e.get(key) if isinstance(e, dict) else None for e in entries], dtype=object)


def _valid_images(images: list, where: str, problems: _Problems) -> tuple[pd.Index, np.ndarray]:
    """Ids and file names of the well-formed, first-seen image entries."""
    image_id, file_name = _field(images, "id"), _field(images, "file_name")

    def image_record(i: int) -> str:
        return f"image entry {i} in {where}"

    valid = (image_id.map(type).eq(int) & file_name.map(type).eq(str)).to_numpy()
    problems.add(~valid, "bad_image_record", image_record, lambda i: f"id={image_id[i]!r} file_name={file_name[i]!r}")
    first = valid & _first_wins(image_id.where(valid))
    problems.add(valid & ~first, "duplicate_image_id", image_record, lambda i: f"id {image_id[i]}")
    return pd.Index(image_id[first].astype(np.int64)), file_name[first].to_numpy()


def _valid_captions(anns: list, known_ids: pd.Index, where: str, problems: _Problems):
    """(annotation ids, image positions in `known_ids`, trimmed caption texts, rows
    kept): well-formed annotations of known images with a non-empty caption, first id wins."""
    ann_id, ann_image, caption = _field(anns, "id"), _field(anns, "image_id"), _field(anns, "caption")

    def record(i: int) -> str:
        return f"annotation {ann_id[i]} in {where}"

    has_id = ann_id.map(type).eq(int).to_numpy()
    problems.add(~has_id, "bad_annotation_record", record, lambda i: f"id={ann_id[i]!r}")
    is_int = has_id & ann_image.map(type).eq(int).to_numpy()
    position = np.full(len(ann_id), -1, dtype=np.int64)
    if is_int.any():
        position[is_int] = known_ids.get_indexer(ann_image[is_int].astype(np.int64))
    known = position >= 0
    problems.add(has_id & ~known, "unknown_image_id", record, lambda i: f"image_id {ann_image[i]!r}")
    is_str = caption.map(type).eq(str).to_numpy()
    problems.add(known & ~is_str, "caption_not_string", record,
                 lambda i: f"caption is {type(caption[i]).__name__}: {str(caption[i])[:40]}")
    text = pa.array([c if type(c) is str else "" for c in caption], type=pa.string())
    text = pc.utf8_trim_whitespace(text)  # vectorised; inner whitespace is the tokenizer's business
    non_empty = pc.greater(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
    problems.add(known & is_str & ~non_empty, "empty_caption", record, lambda i: f"caption {caption[i]!r}")
    ok = known & is_str & non_empty
    first_ann = ok & _first_wins(ann_id.where(ok))
    problems.add(ok & ~first_ann, "duplicate_annotation_id", record, lambda i: f"id {ann_id[i]}")
    return ann_id, position, text, np.flatnonzero(first_ann)


def _read_split(annotations, name: str, split: str) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    data = _load_annotations(annotations, name, split)
    problems = _Problems(split)
    where = f"captions_{name}.json"
    known_ids, known_files = _valid_images(data["images"], where, problems)
    ann_id, position, text, rows = _valid_captions(data["annotations"], known_ids, where, problems)
    del data  # the parsed JSON: its columns are all that is kept
    prefix = f"coco/{name}/"
    image_ids = pa.array(known_ids.to_numpy()[position[rows]])
    table = pd.DataFrame(
        {
            "sample_id": _strings(_join(prefix, pa.array(ann_id[rows].astype(np.int64)))),
            "image_id": _strings(_join(prefix, image_ids)),
            "image_path": _strings(_join(f"{name}/", pa.array(known_files[position[rows]]))),
            "text": _strings(text.take(pa.array(rows))),
            "answer": "",
            "split": split,
            "question_type": "caption",
            "source": SOURCE,
        }
    )
    logger.info(
        "COCO %s (%s): %d captions of %d images from %s",
        name, split, len(table), len(known_ids), where,
    )
    return table, problems.frames


def read(annotations, images: ImageRoot, cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All configured splits (`cfg.coco_captions.splits`) as one canonical table, and the
    records that could not be read."""
    coco = cfg.coco_captions
    tables, problems = [], []
    for split, name in coco.splits.items():
        table, found = _read_split(annotations, name, split)
        tables.append(table)
        problems += found
    table = pd.concat(tables, ignore_index=True)
    if "val" not in coco.splits:
        hold_out_val_images(table, cfg.val_fraction, cfg.seed)
    return table, problems_frame(pd.concat(problems, ignore_index=True) if problems else None)
