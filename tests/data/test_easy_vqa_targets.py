"""Targets derived from easy-VQA's own labels and images."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from multimodal_doubleloop.data.image_root import ImageRoot
from multimodal_doubleloop.data.sources.easy_vqa import derive, image_attributes, shape_coverage


def _table(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """(image_id, question, answer, question_type) -> a minimal easy-VQA-like table."""
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(rows))],
            "image_id": [r[0] for r in rows],
            "image_path": [f"/img/{r[0]}.png" for r in rows],
            "text": [r[1] for r in rows],
            "answer": [r[2] for r in rows],
            "split": "train",
            "question_type": [r[3] for r in rows],
            "source": "easy_vqa",
        }
    )


def test_attributes_follow_every_kind_of_question():
    table = _table(
        [
            ("a", "what color is the shape?", "blue", "color"),
            ("a", "what shape is present?", "circle", "shape"),
            ("b", "what is the red shape?", "triangle", "shape"),  # names the colour
            ("c", "what color is the rectangle?", "teal", "color"),  # names the shape
            ("d", "is there a green shape?", "yes", "yes/no"),
            ("d", "is there not a circle?", "no", "yes/no"),  # negated, answered no
            ("e", "is no yellow shape present?", "yes", "yes/no"),  # rules yellow out
            ("e", "does the image contain a triangle?", "no", "yes/no"),
            ("e", "is there a circle in the image?", "no", "yes/no"),  # only rectangle is left
        ]
    )
    attrs = image_attributes(table)
    assert attrs.to_dict("index") == {
        "a": {"color": "blue", "shape": "circle"},
        "b": {"color": "red", "shape": "triangle"},
        "c": {"color": "teal", "shape": "rectangle"},
        "d": {"color": "green", "shape": "circle"},
        "e": {"color": "", "shape": "rectangle"},
    }


def test_contradicting_labels_raise():
    table = _table(
        [
            ("a", "what color is the shape?", "blue", "color"),
            ("a", "is there a red shape?", "yes", "yes/no"),
        ]
    )
    with pytest.raises(ValueError, match="more than one color"):
        image_attributes(table)


def test_coverage_is_the_shape_area(tmp_path):
    im = Image.new("RGB", (64, 64), (250, 240, 235))
    ImageDraw.Draw(im).rectangle((8, 8, 23, 39), fill=(0, 0, 255))  # 16 x 32 pixels
    im.save(tmp_path / "r.png")
    assert shape_coverage(ImageRoot(str(tmp_path)), "r.png") == pytest.approx(16 * 32 / 64**2)


def test_caption_rows_only_where_colour_and_shape_are_known(tmp_path):
    table = _table(
        [
            ("a", "what color is the shape?", "blue", "color"),
            ("a", "what shape is present?", "circle", "shape"),
            ("b", "what color is the shape?", "red", "color"),
        ]
    )
    out = derive(table, None, {"color", "shape", "color_shape"}, caption_rows=True)
    captions = out[out.question_type == "caption"]
    assert list(captions["text"]) == ["a blue circle"] and list(captions["image_id"]) == ["a"]
    assert list(out.loc[out.image_id == "b", "color_shape"]) == [""]
    assert derive(table, None, set(), caption_rows=False) is table  # nothing asked, nothing done


def test_full_easy_vqa_caption_rows(samples_full_derived):
    captions = samples_full_derived[samples_full_derived.question_type == "caption"]
    assert captions["text"].nunique() == 24  # 8 colours x 3 shapes
    assert captions.groupby("image_id").size().eq(1).all()
    assert 0.85 < captions["image_id"].nunique() / samples_full_derived["image_id"].nunique() < 0.95


@pytest.fixture(scope="module")
def samples_full_derived(easy_vqa_raw):
    from multimodal_doubleloop.data.config import IngestionConfig
    from multimodal_doubleloop.data.sources.easy_vqa import read

    table, _ = read(*easy_vqa_raw, IngestionConfig.from_dict({"val_fraction": 0.0}))
    return derive(table, easy_vqa_raw[1], {"color_shape"}, caption_rows=True)
