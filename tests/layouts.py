"""Tiny data sets in the real on-disk layouts: COCO captions (annotations JSON + image
folders) and ImageFolder (<split>/<class>/*.png|jpg). Real files, real JSON structure."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 170, 30)}
SHAPES = ("square", "circle")


def draw(path: Path, color: str, shape: str, size: int = 32) -> None:
    """A flat background with one flat shape; the format follows the suffix."""
    im = Image.new("RGB", (size, size), (240, 236, 228))
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    pen = ImageDraw.Draw(im)
    (pen.rectangle if shape == "square" else pen.ellipse)(box, fill=COLORS[color])
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_coco(root: Path, splits: dict[str, int] | None = None, captions_per_image: int = 2) -> Path:
    """`<root>/annotations/captions_<split>.json` and `<root>/<split>/<file>.jpg`."""
    splits = splits or {"train2017": 12, "val2017": 6}
    combos = [(c, s) for c in COLORS for s in SHAPES]
    ann_id = 1
    for k, (name, n) in enumerate(splits.items()):
        images, annotations = [], []
        for i in range(n):
            image_id = 100_000 * (k + 1) + i
            color, shape = combos[i % len(combos)]
            file_name = f"{image_id:012d}.jpg"
            draw(root / name / file_name, color, shape)
            images.append(
                {"id": image_id, "file_name": file_name, "width": 32, "height": 32, "license": 1}
            )
            for text in (f"a {color} {shape}", f"A {shape} that is {color}.")[:captions_per_image]:
                annotations.append({"id": ann_id, "image_id": image_id, "caption": text})
                ann_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        document = {"info": {}, "licenses": [], "images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{name}.json").write_text(json.dumps(document))
    return root


def edit_coco(root: Path, name: str, edit) -> None:
    """Rewrite one annotation file through `edit(document)`."""
    path = root / "annotations" / f"captions_{name}.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def make_image_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """`<root>/<split>/<class>/<i>.png|jpg`, classes named by colour and shape."""
    per_class = per_class or {"train": 6, "val": 3}
    for split, n in per_class.items():
        for color in COLORS:
            for i in range(n):
                suffix = ".png" if i % 2 else ".jpg"
                draw(root / split / f"{color}_square" / f"{i}{suffix}", color, "square")
    return root
