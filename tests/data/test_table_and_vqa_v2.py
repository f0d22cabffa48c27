"""The table source (CSV, JSON lines, Parquet) and VQA v2 with its accuracy metric, on
small real files read through the catalog entries conf/table and conf/vqa_v2 ship."""

from __future__ import annotations

import pytest
from layouts import TABLE_ROWS, load_raw, make_table, make_vqa_v2

from multimodal_doubleloop.data.config import IngestionConfig
from multimodal_doubleloop.data.schema import validate_table
from multimodal_doubleloop.data.sources import table, vqa_v2
from multimodal_doubleloop.data.sources.vqa_v2 import normalise, vqa_accuracy
from multimodal_doubleloop.pipelines.ingestion.nodes import ingest

TABLE = {"image": "image", "text": "question", "answer": "label", "labels": "tags", "target": "area"}
FORMATS = {
    "csv": {},
    "jsonl": {"dataset": {"type": "pandas.JSONDataset", "load_args": {"lines": True}}, "filename_suffix": ".jsonl"},
    "parquet": {"dataset": "pandas.ParquetDataset", "filename_suffix": ".parquet"},
}


def table_cfg(**extra) -> IngestionConfig:
    return IngestionConfig.from_dict({"source": "table", "val_fraction": 0.25, "table": {**TABLE, **extra}})


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_table_in_any_format_becomes_canonical_rows(tmp_path, fmt):
    make_table(tmp_path / "table", fmt)
    rows, problems = table.read(*load_raw("table", tmp_path, **FORMATS[fmt]), table_cfg())
    rows = validate_table(rows)
    assert problems.empty and len(rows) == sum(TABLE_ROWS.values())
    assert rows["split"].value_counts().to_dict() == {"train": 9, "test": 6, "val": 3}  # 25% of train images
    first = rows[rows.sample_id == "table/train/0"].iloc[0]
    assert (first.image_path, first.text, first.answer) == ("train/red_square_0.png", "what colour is the square?", "red")
    assert first.labels == "red|square" and first.target == 0.25 and first.question_type == "question"


def test_table_split_column_and_list_labels(tmp_path):
    import pandas as pd

    make_table(tmp_path / "table", "parquet")
    train = pd.read_parquet(tmp_path / "table" / "train.parquet")
    test = pd.read_parquet(tmp_path / "table" / "test.parquet")
    both = pd.concat([train.assign(part="train"), test.assign(part="test")], ignore_index=True)
    both["tags"] = both["tags"].str.split("|")  # a list column, as Parquet can hold
    both["row"] = [f"r{i}" for i in range(len(both))]
    (tmp_path / "table" / "train.parquet").unlink()
    (tmp_path / "table" / "test.parquet").unlink()
    both.to_parquet(tmp_path / "table" / "all.parquet")
    cfg = table_cfg(split="part", id="row", text_kind="caption")
    rows, _ = table.read(*load_raw("table", tmp_path, **FORMATS["parquet"]), cfg)
    assert set(rows["split"]) == {"train", "val", "test"} and rows["sample_id"].iloc[0] == "table/all/r0"
    assert rows["labels"].iloc[0] == "red|square" and set(rows["question_type"]) == {"caption"}


def test_table_column_mapping_errors_name_the_columns(tmp_path):
    make_table(tmp_path / "table")
    raw = load_raw("table", tmp_path)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['caption'\].*map yours in ingestion.table"):
        table.read(*raw, table_cfg(text="caption"))
    with pytest.raises(FileNotFoundError, match=r"no partition 'training'.*it has \['test', 'train'\]"):
        table.read(*raw, table_cfg(splits={"train": "training"}))
    with pytest.raises(ValueError, match="text_kind='poem'"):
        table_cfg(text_kind="poem")


def test_table_trains_the_tasks_its_columns_feed(tmp_path, tasks_params):
    make_table(tmp_path / "table")
    tasks_params["active"] = ["answer", "tags", "area"]
    tasks_params["definitions"]["tags"] = {"type": "multilabel", "target": ["labels"]}
    tasks_params["definitions"]["area"] = {"type": "regression", "target": "target"}
    params = {"source": "table", "val_fraction": 0.25, "image_size": 32, "table": TABLE}
    samples, report, _ = ingest(*load_raw("table", tmp_path), params, tasks_params)
    assert report.empty and {"labels", "target"} <= set(samples.columns)
    tasks_params["active"] = ["attributes"]  # easy-VQA's colour/shape columns
    with pytest.raises(ValueError, match=r"multilabel task 'attributes' reads column\(s\) \['color', 'shape'\] that the table table lacks"):
        ingest(*load_raw("table", tmp_path), params, tasks_params)


def test_vqa_v2_rows_keep_the_ten_human_answers(tmp_path):
    make_vqa_v2(tmp_path)
    cfg = IngestionConfig.from_dict({"source": "vqa_v2", "val_fraction": 0.0})
    rows, problems = vqa_v2.read(*load_raw("vqa_v2", tmp_path), cfg)
    rows = validate_table(rows)
    assert problems.empty and len(rows) == 2 * (8 + 4)
    first = rows.iloc[0]
    assert first.image_path == "train2014/COCO_train2014_000000001000.jpg"
    assert (first.text, first.answer, first.question_type) == ("what color is the square?", "red", "other")
    assert first.answers.split("|") == ["red"] * 8 + ["maybe", "maybe"]  # normalised
    assert set(rows["split"]) == {"train", "test"}


def test_vqa_v2_unannotated_question_is_a_problem_record(tmp_path):
    import json

    make_vqa_v2(tmp_path)
    path = tmp_path / "vqa_v2" / "v2_mscoco_train2014_annotations.json"
    doc = json.loads(path.read_text())
    doc["annotations"] = doc["annotations"][1:]
    path.write_text(json.dumps(doc))
    cfg = IngestionConfig.from_dict({"source": "vqa_v2", "val_fraction": 0.0})
    rows, problems = vqa_v2.read(*load_raw("vqa_v2", tmp_path), cfg)
    assert list(problems["reason"]) == ["unannotated_question"] and len(rows) == 23
    assert problems["record"][0] == "question 1 in v2_OpenEnded_mscoco_train2014_questions.json"


def test_vqa_accuracy_by_hand():
    humans = "|".join(["two"] * 2 + ["2"] * 7 + ["three"])
    # 2 of 10 said "two": 2/3; 7 said "2": capped at 1; 1 said "three": 1/3; nobody said "four"
    assert vqa_accuracy(["two", "2", "three", "four"], [humans] * 4) == pytest.approx([2 / 3, 1.0, 1 / 3, 0.0])
    assert vqa_accuracy(["Yes."], ["yes|yes|no"]) == [pytest.approx(2 / 3)]  # normalised before counting
    assert normalise("  A  Dog. ") == "a dog"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_table_carrying_image_bytes_decodes_like_the_image_files(tmp_path, fmt):
    """A table whose image column holds the files' bytes (Parquet binary, base64 text in
    CSV) ingests, survives the samples Parquet round trip, and decodes to the same pixels
    as the same table with paths, without reading raw_images."""
    import base64
    import shutil

    import numpy as np
    import pandas as pd

    from multimodal_doubleloop.pipelines.inference.nodes import make_example_requests
    from multimodal_doubleloop.pipelines.ingestion.nodes import decode_images

    params = {"source": "table", "val_fraction": 0.25, "image_size": 32, "in_memory_images": False, "table": TABLE}
    make_table(tmp_path / "table", "parquet")
    by_path, _, _ = ingest(*load_raw("table", tmp_path, **FORMATS["parquet"]), params, None)
    expected = decode_images(by_path, load_raw("table", tmp_path, **FORMATS["parquet"])[1], {**params, "in_memory_images": True})["pixels"]

    for split in ("train", "test"):  # the same rows, carrying their images' bytes
        path = tmp_path / "table" / f"{split}.parquet"
        frame = pd.read_parquet(path)
        data = [(tmp_path / "table" / "images" / name).read_bytes() for name in frame["image"]]
        frame["image"] = data if fmt == "parquet" else [base64.b64encode(d).decode() for d in data]
        path.unlink()
        frame.to_parquet(path, index=False) if fmt == "parquet" else frame.to_csv(path.with_suffix(".csv"), index=False)
    shutil.rmtree(tmp_path / "table" / "images")
    (tmp_path / "table" / "images").mkdir()  # raw_images still declared, now empty

    raw = load_raw("table", tmp_path, **FORMATS[fmt])
    samples, report, _ = ingest(*raw, {**params, "table": {**TABLE, "image_bytes": True}}, None)
    assert report.empty and len(samples) == len(by_path)
    assert samples["image_path"].str.fullmatch(r"embedded/[0-9a-f]{64}").all()
    samples.to_parquet(tmp_path / "samples.parquet")  # as the catalog stores it
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    index = decode_images(samples, raw[1], params)  # lazy asked, decoded in memory
    assert index["root"] is None and index["pixels"] is not None
    # identical files are one embedded image: compare each with its first row's file
    path_row = {s: i for i, s in enumerate(by_path.drop_duplicates("image_id")["sample_id"])}
    firsts = samples.drop_duplicates("image_id")["sample_id"]
    assert len(firsts) < len(path_row)  # make_table draws each colour/shape pair more than once
    for i, sample_id in enumerate(firsts):
        np.testing.assert_array_equal(index["pixels"][i], expected[path_row[sample_id]])
    requests = make_example_requests(samples, raw[1], {"example_requests": 2})
    assert base64.b64decode(requests["image"][0]) == samples[samples.split == "test"]["image_bytes"].iloc[0]


def test_table_image_bytes_errors_name_the_row(tmp_path):
    import pandas as pd

    (tmp_path / "table" / "images").mkdir(parents=True)
    pd.DataFrame({"image": ["not base64!", ""], "question": ["q", "q"], "label": ["a", "b"]}).to_csv(
        tmp_path / "table" / "train.csv", index=False
    )
    cfg = table_cfg(image_bytes=True, labels="", target="", splits={"train": "train"})
    with pytest.raises(ValueError, match=r"'train' row 0: the image column holds text that is not base64"):
        table.read(*load_raw("table", tmp_path), cfg)
