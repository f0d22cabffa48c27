"""Each "your own data" layout, end to end, on real images: easy-VQA rewritten as a
table (CSV), VQA v2 JSON, COCO captions JSON and an ImageFolder of shapes, under
`data/01_raw/<layout>/` where `conf/<source>/catalog.yml` looks. Then one
`kedro run --env <source>` each, exactly as the README's "Your own data" table says,
and the test figures of each run.

    .venv/bin/python benchmarks/own_data.py [--images 1000] [--epochs 3] [--sources table,vqa_v2,coco_captions,image_folder]

`--images` caps the images per split (`ingestion.max_images_per_split`) so the four
runs take minutes on 2 CPU cores. Nothing is downloaded: the images are easy-VQA's,
copied. What each layout holds:

- table: train.csv / test.csv with columns image, text, answer (the questions);
- vqa_v2: the questions and annotations files, ten human answers per question (all
  the easy-VQA answer: easy-VQA has one, so VQA accuracy equals accuracy here), images
  as <split>/<id>.png (`ingestion.vqa_v2.image`);
- coco_captions: one caption per image ("a blue rectangle", from the labels);
- image_folder: <split>/<shape>/<id>.png, the shape as the class.

Progress goes to stderr; the last line of stdout is one JSON object with, per source,
the run's command, wall seconds and test metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

PROJECT = Path(__file__).resolve().parents[1]
RAW = PROJECT / "data" / "01_raw"
logger = logging.getLogger("own_data")


def easy_vqa_table() -> tuple[pd.DataFrame, str]:
    """easy-VQA's questions with derived colour and shape, and the package's data folder."""
    from multimodal_doubleloop.data.config import IngestionConfig
    from multimodal_doubleloop.data.image_root import ImageRoot
    from multimodal_doubleloop.data.sources import easy_vqa

    root = easy_vqa.package_data()
    annotations = {s: json.loads((Path(root) / s / "questions.json").read_text()) for s in ("train", "test")}
    table, _ = easy_vqa.read(annotations, ImageRoot(root), IngestionConfig.from_dict({"val_fraction": 0.0}))
    return easy_vqa.derive(table, ImageRoot(root), {"color", "shape", "color_shape"}, caption_rows=False), root


def _copy(source: str, rel: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copyfile(Path(source) / rel, target)


def write_table(table: pd.DataFrame, root: str) -> None:
    out = RAW / "table"
    for split, rows in table.groupby("split"):
        for rel in rows["image_path"].unique():
            _copy(root, rel, out / "images" / rel)
        rows[["image_path", "text", "answer"]].rename(columns={"image_path": "image"}).to_csv(
            out / f"{split}.csv", index=False
        )


def write_vqa_v2(table: pd.DataFrame, root: str) -> None:
    out = RAW / "vqa_v2"
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in table.groupby("split"):
        name = "train2014" if split == "train" else "val2014"  # VQA v2's names (ingestion.vqa_v2.splits)
        ids = rows["image_path"].str.extract(r"(\d+)\.png$")[0].astype(int)
        for rel, image_id in zip(rows["image_path"], ids, strict=True):
            _copy(root, rel, RAW / "coco2014" / name / f"{image_id}.png")
        questions, annotations = [], []
        rows = rows.assign(image_number=ids.to_numpy())
        for qid, row in enumerate(rows.itertuples()):
            text, answer, image_id = row.text, row.answer, row.image_number
            humans = [answer] * 10
            questions.append({"question_id": qid, "image_id": int(image_id), "question": text})
            annotations.append({
                "question_id": qid, "image_id": int(image_id), "answer_type": row.question_type,
                "multiple_choice_answer": answer, "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(humans)],
            })
        (out / f"v2_OpenEnded_mscoco_{name}_questions.json").write_text(json.dumps({"questions": questions}))
        (out / f"v2_mscoco_{name}_annotations.json").write_text(json.dumps({"annotations": annotations}))


def write_coco(table: pd.DataFrame, root: str) -> None:
    out = RAW / "coco"
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    images = table[table["color_shape"] != ""].drop_duplicates("image_id")
    for split, rows in images.groupby("split"):
        name = f"{'train' if split == 'train' else 'val'}2017"
        entries, captions = [], []
        for k, (rel, label) in enumerate(zip(rows["image_path"], rows["color_shape"], strict=True)):
            file_name = rel.replace("/", "_")
            _copy(root, rel, out / name / file_name)
            entries.append({"id": k, "file_name": file_name, "width": 64, "height": 64})
            captions.append({"id": k, "image_id": k, "caption": f"a {label}"})
        doc = {"images": entries, "annotations": captions}
        (out / "annotations" / f"captions_{name}.json").write_text(json.dumps(doc))


def write_image_folder(table: pd.DataFrame, root: str) -> None:
    out = RAW / "image_folder"
    images = table[table["shape"] != ""].drop_duplicates("image_id")
    for rel, split, shape in zip(images["image_path"], images["split"], images["shape"], strict=True):
        _copy(root, rel, out / ("train" if split == "train" else "val") / shape / rel.replace("/", "_"))


WRITERS = {"table": write_table, "vqa_v2": write_vqa_v2, "coco_captions": write_coco, "image_folder": write_image_folder}
EXTRA = {"vqa_v2": ["ingestion.vqa_v2.image='{split}/{id}.png'"]}  # quoted: --params values are YAML
PIPELINE = {"coco_captions": "fit"}  # captions have no answers: no serving package


def run(source: str, images: int, epochs: int) -> dict:
    params = [f"ingestion.max_images_per_split={images}", f"training.epochs={epochs}", *EXTRA.get(source, [])]
    command = ["kedro", "run", "--env", source, "--pipeline", PIPELINE.get(source, "train"), "--params", ",".join(params)]
    logger.info("%s", " ".join(command))
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    start = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:]], cwd=PROJECT, env=env,
                            capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    if result.returncode:
        raise RuntimeError(f"{source} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    metrics = json.loads((PROJECT / "data/08_reporting/metrics.json").read_text())
    return {"command": " ".join(command), "seconds": seconds, "metrics": metrics}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images per split (max_images_per_split)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sources", default=",".join(WRITERS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    table, root = easy_vqa_table()
    results = {}
    for source in args.sources.split(","):
        logger.info("writing easy-VQA as %s under %s", source, RAW)
        WRITERS[source](table, root)
        results[source] = run(source, args.images, args.epochs)
        logger.info("%s: %s", source, results[source]["metrics"])
    print(json.dumps(results))  # noqa: T201 - the benchmark's result line


if __name__ == "__main__":
    main()
