"""The ImageNet / torchvision ImageFolder layout: `<root>/<split>/<class>/*.jpg|jpeg|png`.

One canonical row per image: `answer` is the class (folder) name, `question_type` is
"class" and `text` is a prompt naming the class ("a photo of a golden retriever"),
for tasks that want text (contrastive, zero-shot). Image-only tasks read no text: the
prompt names the answer. Files with other extensions are not part of the layout; they
are counted and logged, not read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..quality import problems_frame
from ..schema import SPLITS
from ..splits import hold_out_val_images

logger = logging.getLogger(__name__)

SOURCE = "image_folder"
EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared case-insensitively (ImageNet uses .JPEG)


@dataclass
class ImageFolderConfig:
    root: str = "data/01_raw/image_folder"
    # canonical split -> folder under root; ImageNet's labelled val set is the usual test
    # split, and `val` is carved from train by ingestion.val_fraction unless given here.
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "val"})
    prompt: str = "a photo of a {}"  # each image's text; {} = class name, "_" read as a space

    def __post_init__(self):
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or "train" not in self.splits:
            raise ValueError(
                f"image_folder.splits keys {sorted(self.splits)} must include 'train' and "
                f"be among {SPLITS} (bad: {bad})"
            )
        if self.prompt.count("{}") != 1:
            raise ValueError(f"image_folder.prompt={self.prompt!r} needs exactly one '{{}}'")


def class_prompt(template: str, class_name: str) -> str:
    return template.format(class_name.replace("_", " "))


def _scan(split_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(class, file path) of every image under split_dir/<class>/, and skipped paths."""
    found, skipped = [], []
    with os.scandir(split_dir) as classes:
        for entry in sorted(classes, key=lambda e: e.name):
            if not entry.is_dir():
                skipped.append(entry.path)
                continue
            with os.scandir(entry.path) as files:
                for f in sorted(files, key=lambda e: e.name):
                    if f.name.lower().endswith(EXTENSIONS) and not f.is_dir():
                        found.append((entry.name, f.path))
                    else:
                        skipped.append(f.path)
    return found, skipped


def read_image_folder(
    cfg: ImageFolderConfig, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every configured split as one canonical table (and no record-level problems:
    unreadable files are found by `quality.screen_images`)."""
    root = Path(cfg.root)
    frames = []
    for split, folder in cfg.splits.items():
        split_dir = root / folder
        if not split_dir.is_dir():
            raise FileNotFoundError(
                f"image folder {split_dir} not found (ingestion.image_folder.root={cfg.root!r}, "
                f"split {split!r} -> {folder!r}); expected <root>/<split>/<class>/*.jpg|png"
            )
        found, skipped = _scan(split_dir)
        if skipped:
            logger.info(
                "image_folder %s: skipped %d path(s) that are not <class>/*%s, e.g. %s",
                folder, len(skipped), "|".join(EXTENSIONS), skipped[:3],
            )
        if not found:
            raise ValueError(f"image folder {split_dir} has no <class>/*.jpg|jpeg|png files")
        classes = pd.Series([c for c, _ in found], dtype="string")
        paths = pd.Series([p for _, p in found], dtype="string")
        ids = f"image_folder/{folder}/" + paths.str.slice(len(str(split_dir)) + 1)
        prompts = {c: class_prompt(cfg.prompt, c) for c in classes.unique()}
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": ids,
                    "image_id": ids,
                    "image_path": paths,
                    "text": classes.map(prompts),
                    "answer": classes,
                    "split": split,
                    "question_type": "class",
                    "source": SOURCE,
                }
            )
        )
        logger.info(
            "image_folder %s (%s): %d images in %d classes", folder, split, len(found), len(prompts)
        )
    table = pd.concat(frames, ignore_index=True)
    if "val" not in cfg.splits:
        hold_out_val_images(table, val_fraction, seed)
    train = table["split"] == "train"
    unseen = sorted(set(table.loc[~train, "answer"].unique()) - set(table.loc[train, "answer"].unique()))
    if unseen:
        logger.warning("image_folder: class(es) %s have no training images; they score as wrong", unseen[:10])
    return table, problems_frame()
