"""COCO captions and ImageFolder sources on real on-disk layouts, and the bad-input policy."""

from __future__ import annotations

import pandas as pd
import pytest
from layouts import draw, edit_coco, load_raw, make_coco, make_image_folder

from multimodal_doubleloop.data.config import IngestionConfig
from multimodal_doubleloop.data.image_root import ImageRoot
from multimodal_doubleloop.data.quality import BadInputError, apply_policy, screen_images, summarise
from multimodal_doubleloop.data.schema import validate_table
from multimodal_doubleloop.data.sources import coco_captions, image_folder
from multimodal_doubleloop.data.sources.coco_captions import CocoCaptionsConfig
from multimodal_doubleloop.pipelines.ingestion.nodes import ingest

COCO_SPLITS = {"train": "train2017", "test": "val2017"}


def coco_params(**extra) -> dict:
    return {
        "source": "coco_captions",
        "val_fraction": 0.25,
        "in_memory_images": False,
        "image_size": 32,
        "coco_captions": {"splits": COCO_SPLITS},
        **extra,
    }


def read_coco(raw_root, val_fraction: float):
    cfg = IngestionConfig.from_dict(coco_params(val_fraction=val_fraction))
    return coco_captions.read(*load_raw("coco_captions", raw_root), cfg)


def retrieval_tasks(tasks_params: dict) -> dict:
    tasks_params["active"] = ["retrieval"]
    tasks_params["definitions"]["retrieval"]["zero_shot"] = ""
    return tasks_params


def test_coco_layout_becomes_one_row_per_caption(tmp_path):
    make_coco(tmp_path / "coco")
    table, problems = read_coco(tmp_path, 0.25)
    table = validate_table(table)
    assert problems.empty
    assert len(table) == (12 + 6) * 2 and table["image_id"].nunique() == 18
    assert set(table["question_type"]) == {"caption"} and (table["answer"] == "").all()
    assert table.groupby("image_id").size().eq(2).all()  # several captions per image
    # 25% of the 12 training images (with all their captions) become validation
    assert table.loc[table.split == "val", "image_id"].nunique() == 3
    assert table.loc[table.split == "test", "image_id"].nunique() == 6
    row = table[table.sample_id == "coco/train2017/1"].iloc[0]
    assert row.text == "a red square" and row.image_id == "coco/train2017/100000"
    assert row.image_path == "train2017/000000100000.jpg"  # relative to raw_images


def test_coco_malformed_records_are_counted_never_dropped(tmp_path):
    root = make_coco(tmp_path / "coco")

    def corrupt(doc):
        doc["annotations"][0]["caption"] = 42  # not a string
        doc["annotations"][1]["caption"] = "   "  # empty
        doc["annotations"].append({"id": 9000, "image_id": 777, "caption": "a lost caption"})
        doc["annotations"].append({"id": 3, "image_id": 100_001, "caption": "same id again"})

    edit_coco(root, "train2017", corrupt)
    table, problems = read_coco(tmp_path, 0.0)
    assert problems["reason"].value_counts().to_dict() == {
        "caption_not_string": 1,
        "empty_caption": 1,
        "unknown_image_id": 1,
        "duplicate_annotation_id": 1,
    }
    assert len(table) + len(problems) == 36 + 2  # every record is a row or a problem
    assert "annotation 9000 in captions_train2017.json" in set(problems["record"])


def test_error_policy_names_counts_and_examples(tmp_path, tasks_params):
    root = make_coco(tmp_path / "coco")
    edit_coco(root, "train2017", lambda d: d["annotations"][0].update(caption=["a", "list"]))
    (root / "val2017" / "000000200000.jpg").unlink()  # 2 captions lose their image
    with pytest.raises(BadInputError) as err:
        ingest(*load_raw("coco_captions", tmp_path), coco_params(on_bad_input="error"), retrieval_tasks(tasks_params))
    message = str(err.value)
    assert "3 malformed record(s)" in message
    assert "caption_not_string: 1" in message and "caption is list" in message
    assert "missing_image_file: 2" in message and "000000200000.jpg" in message
    assert "on_bad_input=quarantine" in message  # says how to go on


def test_quarantine_policy_reports_every_record(tmp_path, tasks_params):
    root = make_coco(tmp_path / "coco")
    edit_coco(root, "train2017", lambda d: d["annotations"].append({"id": 5000, "image_id": 1, "caption": "x"}))
    (root / "train2017" / "000000100003.jpg").write_bytes(b"not an image at all")
    params = coco_params(on_bad_input="quarantine", val_fraction=0.0)
    samples, report, summary = ingest(*load_raw("coco_captions", tmp_path), params, retrieval_tasks(tasks_params))
    assert summary == {
        "policy": "quarantine",
        "total": 3,
        "by_reason": {"unknown_image_id": 1, "unreadable_image": 2},
        "by_split": {"train": 3},
    }
    assert set(report.columns) == {"source", "split", "reason", "record", "image_path", "detail"}
    assert not samples["image_path"].str.endswith("000000100003.jpg").any()
    assert len(samples) == 36 - 2


def test_screen_full_mode_finds_truncated_files(tmp_path):
    good, cut = tmp_path / "good.png", tmp_path / "cut.png"
    draw(good, "red", "square", size=64)
    draw(cut, "blue", "circle", size=64)
    cut.write_bytes(cut.read_bytes()[:-40])  # header intact, pixel data cut short
    table = pd.DataFrame({"sample_id": ["a", "b"], "split": "train", "image_path": ["good.png", "cut.png"]})
    root = ImageRoot(str(tmp_path))
    kept, problems = screen_images(table, root, "header", "test")
    assert problems.empty and len(kept) == 2  # the header alone looks fine
    kept, problems = screen_images(table, root, "full", "test")
    assert list(kept["sample_id"]) == ["a"] and list(problems["reason"]) == ["unreadable_image"]


def test_policy_and_summary_without_problems():
    report = apply_policy(pd.DataFrame(columns=["reason"]), "error", "x")
    assert report.empty and summarise(report, "error")["total"] == 0
    with pytest.raises(ValueError, match="on_bad_input='skip'"):
        apply_policy(report, "skip", "x")


def test_image_folder_layout(tmp_path):
    root = make_image_folder(tmp_path / "image_folder")
    (root / "train" / "README.txt").write_text("not a class")
    (root / "train" / "red_square" / "notes.txt").write_text("not an image")
    cfg = IngestionConfig.from_dict({"val_fraction": 0.0, "image_folder": {"prompt": "a photo of a {}"}})
    table, problems = image_folder.read(*load_raw("image_folder", tmp_path), cfg)
    table = validate_table(table)
    assert problems.empty and len(table) == 3 * (6 + 3)
    assert set(table["answer"]) == {"red_square", "blue_square", "green_square"}
    assert set(table.loc[table.answer == "red_square", "text"]) == {"a photo of a red square"}
    assert set(table["question_type"]) == {"class"} and set(table["split"]) == {"train", "test"}
    assert table["sample_id"].str.startswith("image_folder/train/").sum() == 18


def test_an_image_folder_split_no_split_reads_is_named_in_a_warning(tmp_path, caplog):
    """A train/val/test layout under the ImageNet default (val read as test) leaves
    test/ unread: the log says so and how to map it."""
    make_image_folder(tmp_path / "image_folder", {"train": 2, "val": 1, "test": 1})
    cfg = IngestionConfig.from_dict({"val_fraction": 0.0})
    with caplog.at_level("WARNING", logger="multimodal_doubleloop.data.sources.image_folder"):
        table, _ = image_folder.read(*load_raw("image_folder", tmp_path), cfg)
    assert not table["image_path"].str.startswith("test/").any()
    assert "['test'] under" in caplog.text and "--params ingestion.image_folder.splits.test=test" in caplog.text
    caplog.clear()  # with test/ mapped, the unread folder is val/, and the hint maps it as val
    cfg = IngestionConfig.from_dict({"val_fraction": 0.0, "image_folder": {"splits": {"train": "train", "test": "test"}}})
    with caplog.at_level("WARNING", logger="multimodal_doubleloop.data.sources.image_folder"):
        image_folder.read(*load_raw("image_folder", tmp_path), cfg)
    assert "['val'] under" in caplog.text and "--params ingestion.image_folder.splits.val=val" in caplog.text


def test_missing_layout_is_a_clear_error(tmp_path):
    cfg = IngestionConfig.from_dict({"val_fraction": 0.0})
    with pytest.raises(FileNotFoundError, match=r"no partition 'captions_train2017' .*it has \['captions_val'\]"):
        coco_captions.read({"captions_val": {}}, ImageRoot(str(tmp_path)), cfg)
    with pytest.raises(FileNotFoundError, match="expected <root>/<split>/<class>"):
        image_folder.read(None, ImageRoot(str(tmp_path)), cfg)
    with pytest.raises(ValueError, match="must include 'train'"):
        CocoCaptionsConfig(splits={"test": "val2017"})
