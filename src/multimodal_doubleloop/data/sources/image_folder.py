"""The ImageNet / torchvision ImageFolder layout: `<root>/<split>/<class>/*.jpg|jpeg|png`,
`<root>` being the catalog's `raw_images` (any fsspec filesystem).

The labels are the folder names, so this source reads no annotation files: the
catalog's `raw_annotations` is the same image root (`conf/image_folder/catalog.yml`).

One canonical row per image: `answer` is the class (folder) name, `question_type` is
"class" and `text` is a prompt naming the class ("a photo of a golden retriever"),
for tasks that want text (contrastive, zero-shot). Image-only tasks read no text: the
prompt names the answer. Files with other extensions are not part of the layout; they
are counted and logged, not read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from ..image_root import ImageRoot
from ..quality import problems_frame
from ..schema import SPLITS
from ..splits import hold_out_val_images

logger = logging.getLogger(__name__)

SOURCE = "image_folder"
EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared case-insensitively (ImageNet uses .JPEG)


@dataclass
class ImageFolderConfig:
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


def _scan(images: ImageRoot, folder: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(class, path relative to the root) of every image at <folder>/<class>/<file>,
    and the paths that are not part of the layout."""
    found, skipped = [], []
    for path in images.files(folder):
        parts = path[len(folder) + 1 :].split("/")
        if len(parts) == 2 and parts[1].lower().endswith(EXTENSIONS):
            found.append((parts[0], path))
        else:
            skipped.append(path)
    return found, skipped


def read(annotations, images: ImageRoot, cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every configured split (`cfg.image_folder.splits`) as one canonical table (and no
    record-level problems: unreadable files are found by `quality.screen_images`).
    `annotations` is unused: an ImageFolder's labels are its folder names."""
    folders = cfg.image_folder
    frames = []
    for split, folder in folders.splits.items():
        if not images.isdir(folder):
            raise FileNotFoundError(
                f"image folder {images.where(folder)} not found (raw_images={images.url!r}, "
                f"split {split!r} -> {folder!r}); expected <root>/<split>/<class>/*.jpg|png"
            )
        found, skipped = _scan(images, folder)
        if skipped:
            logger.info(
                "image_folder %s: skipped %d path(s) that are not <class>/*%s, e.g. %s",
                folder, len(skipped), "|".join(EXTENSIONS), skipped[:3],
            )
        if not found:
            raise ValueError(f"image folder {images.where(folder)} has no <class>/*.jpg|jpeg|png files")
        classes = pd.Series([c for c, _ in found], dtype="string")
        paths = pd.Series([p for _, p in found], dtype="string")
        ids = "image_folder/" + paths
        prompts = {c: class_prompt(folders.prompt, c) for c in classes.unique()}
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
    unread = {name: "test" if name == "test" else "val" for name in ("val", "validation", "test")
              if name not in folders.splits.values() and images.isdir(name)}
    if unread:
        logger.warning(
            "image_folder: folder(s) %s under %s are read as no split (ingestion.image_folder.splits: %s); "
            "to read them, map them: --params %s",
            list(unread), images.url, folders.splits,
            ",".join(f"ingestion.image_folder.splits.{split}={name}" for name, split in unread.items()),
        )
    table = pd.concat(frames, ignore_index=True)
    if "val" not in folders.splits:
        hold_out_val_images(table, cfg.val_fraction, cfg.seed)
    train = table["split"] == "train"
    unseen = sorted(set(table.loc[~train, "answer"].unique()) - set(table.loc[train, "answer"].unique()))
    if unseen:
        logger.warning("image_folder: class(es) %s have no training images; they score as wrong", unseen[:10])
    return table, problems_frame()
