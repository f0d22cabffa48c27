"""Tiny data sets in the real on-disk layouts: COCO captions (annotations JSON + image
folders), ImageFolder (<split>/<class>/*.png|jpg), tables and VQA v2. Real files, real
JSON structure, read through the raw catalog entries the project ships."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from kedro.io import DataCatalog
from PIL import Image, ImageDraw

CONF = Path(__file__).resolve().parents[1] / "conf"

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


def raw_datasets(source: str, root: Path | str | None = None, **annotations) -> dict:
    """The `raw_annotations` and `raw_images` datasets exactly as the project declares
    them (conf/<source>/catalog.yml; conf/base for easy_vqa), with `data/01_raw` moved
    to `root` (a local folder or an fsspec URL such as memory://), and `annotations`
    replacing keys of the raw_annotations entry (e.g. another `dataset:` type)."""
    from multimodal_doubleloop.data.sources.easy_vqa import package_data

    text = (CONF / ("base" if source == "easy_vqa" else source) / "catalog.yml").read_text()
    text = text.replace("${easy_vqa_data:}", package_data())
    if root is not None:
        text = text.replace("data/01_raw", str(root).rstrip("/"))
    entries = yaml.safe_load(text)
    entries["raw_annotations"] = {**entries["raw_annotations"], **annotations}
    catalog = DataCatalog.from_config({k: entries[k] for k in ("raw_annotations", "raw_images")})
    return {name: catalog.get(name) for name in ("raw_annotations", "raw_images")}


def load_raw(source: str, root: Path | str | None = None, **annotations) -> tuple:
    """(annotations, images) as the ingestion node receives them."""
    datasets = raw_datasets(source, root, **annotations)
    return datasets["raw_annotations"].load(), datasets["raw_images"].load()


TABLE_ROWS = {"train": 12, "test": 6}


def make_table(root: Path, fmt: str = "csv") -> Path:
    """`<root>/train.<fmt>`, `test.<fmt>` with columns image, question, label, tags and
    area, and the images under `<root>/images/` (fmt: csv | jsonl | parquet)."""
    import pandas as pd

    combos = [(c, s) for c in COLORS for s in SHAPES]
    for split, n in TABLE_ROWS.items():
        rows = []
        for i in range(n):
            color, shape = combos[i % len(combos)]
            name = f"{split}/{color}_{shape}_{i}.png"
            draw(root / "images" / name, color, shape)
            rows.append({"image": name, "question": f"what colour is the {shape}?", "label": color,
                         "tags": f"{color}|{shape}", "area": 0.25 if shape == "square" else 0.2})
        frame = pd.DataFrame(rows)
        path = root / f"{split}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False)
    return root


def make_vqa_v2(root: Path, images: dict[str, int] | None = None) -> Path:
    """`<root>/vqa_v2/` questions and annotations JSON (two questions per image, ten
    human answers each) and `<root>/coco2014/<split>/COCO_<split>_<id:012d>.jpg`."""
    images = images or {"train2014": 8, "val2014": 4}
    combos = [(c, s) for c in COLORS for s in SHAPES]
    (root / "vqa_v2").mkdir(parents=True, exist_ok=True)
    question_id = 1
    for name, n in images.items():
        questions, annotations = [], []
        for i in range(n):
            image_id = 1000 + i
            color, shape = combos[i % len(combos)]
            draw(root / "coco2014" / name / f"COCO_{name}_{image_id:012d}.jpg", color, shape)
            for text, answer, kind in ((f"what color is the {shape}?", color, "other"),
                                       ("is it a square?", "yes" if shape == "square" else "no", "yes/no")):
                humans = [answer] * 8 + ["maybe", "Maybe."]
                questions.append({"question_id": question_id, "image_id": image_id, "question": text})
                annotations.append({"question_id": question_id, "image_id": image_id, "answer_type": kind,
                                    "question_type": "what", "multiple_choice_answer": answer,
                                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                                                for k, a in enumerate(humans)]})
                question_id += 1
        (root / "vqa_v2" / f"v2_OpenEnded_mscoco_{name}_questions.json").write_text(json.dumps({"questions": questions}))
        (root / "vqa_v2" / f"v2_mscoco_{name}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def copy_to_memory(local: Path, url: str = "memory://raw") -> str:
    """Every file under `local` copied to an fsspec in-memory filesystem (standing for
    s3:// or gs://); returns the URL of the copy."""
    import fsspec

    fs = fsspec.filesystem("memory")
    base = url.removeprefix("memory://")
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe(f"/{base}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return url


def png_header(width: int, height: int) -> bytes:
    """A PNG's header and a first, tiny data chunk: all PIL reads to learn the size (a
    decompression bomb's header, without the bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
