import pandas as pd
import pytest
from conftest import TINY_MODEL, run_pipeline
from layouts import make_image_folder, raw_datasets

from multimodal_doubleloop.data.schema import CANONICAL_COLUMNS, SchemaError, validate_table
from multimodal_doubleloop.pipelines.ingestion import create_pipeline
from multimodal_doubleloop.pipelines.ingestion.nodes import ingest, ingest_samples


def test_easy_vqa_table_has_canonical_schema(samples):
    assert list(samples.columns[: len(CANONICAL_COLUMNS)]) == list(CANONICAL_COLUMNS)
    assert set(samples["split"]) == {"train", "val", "test"}
    assert set(samples["question_type"]) == {"yes/no", "color", "shape"}
    # validation images are whole training images, never shared with train
    train_images = set(samples.loc[samples.split == "train", "image_id"])
    val_images = set(samples.loc[samples.split == "val", "image_id"])
    assert val_images and not train_images & val_images


def test_full_easy_vqa_counts(easy_vqa_raw):
    table, quarantine, summary = ingest(
        *easy_vqa_raw, {"source": "easy_vqa", "val_fraction": 0.0, "seed": 0, "image_size": 64, "in_memory_images": True}
    )
    assert quarantine.empty and summary["total"] == 0
    counts = table.groupby("split").agg(questions=("sample_id", "size"), images=("image_id", "nunique"))
    assert counts.loc["train"].tolist() == [38575, 4000]
    assert counts.loc["test"].tolist() == [9673, 1000]
    assert table["answer"].nunique() == 13


def test_images_decoded_in_table_order(samples, images):
    assert images["image_ids"] == list(samples.drop_duplicates("image_id")["image_id"])
    assert images["pixels"].shape == (len(images["image_ids"]), 64, 64, 3)
    assert images["pixels"].dtype.name == "uint8"


def test_max_images_per_split_draws_images_not_the_first_files(tmp_path):
    """An ImageFolder lists class by class: the first 6 of 18 training images would all
    be one class. The draw spans classes, is the same for the same seed and another for
    another seed."""
    make_image_folder(tmp_path / "image_folder")  # 3 classes x 6 train / 3 val images
    params = {
        "source": "image_folder",
        "val_fraction": 0.0,
        "image_folder": {"splits": {"train": "train", "test": "val"}},
        "max_images_per_split": 6,
    }
    raw = [dataset.load() for dataset in raw_datasets("image_folder", tmp_path).values()]
    table = ingest_samples(*raw, params)
    assert table.groupby("split")["image_id"].nunique().to_dict() == {"test": 6, "train": 6}
    assert table.loc[table.split == "train", "answer"].nunique() > 1
    again = ingest_samples(*raw, params)
    assert again["image_id"].tolist() == table["image_id"].tolist()
    other = ingest_samples(*raw, {**params, "seed": 1})
    assert set(other["image_id"]) != set(table["image_id"])


def test_unknown_source_is_a_clear_error(easy_vqa_raw, ingestion_params):
    with pytest.raises(ValueError, match="ingestion.source='nope'"):
        ingest_samples(*easy_vqa_raw, {**ingestion_params, "source": "nope"})


def test_samples_store_image_paths_relative_to_their_root(samples, images):
    assert samples["image_path"].str.match(r"^(train|test)/images/\d+\.png$").all()
    assert images["root"].isfile(samples["image_path"].iloc[0])


def test_validate_table_names_the_problem(samples):
    with pytest.raises(SchemaError, match="lacks column"):
        validate_table(samples.drop(columns=["text"]))
    bad = samples.copy()
    bad.loc[0, "split"] = "dev"
    with pytest.raises(SchemaError, match="unknown split"):
        validate_table(bad)
    dup = pd.concat([samples.iloc[:2], samples.iloc[:1]])
    with pytest.raises(SchemaError, match="duplicated sample_id"):
        validate_table(dup)


def test_ingestion_pipeline_on_memory_catalog(ingestion_params, tasks_params):
    catalog = run_pipeline(
        create_pipeline(),
        {"params:ingestion": ingestion_params, "params:tasks": tasks_params, "params:model": TINY_MODEL},
        raw_datasets("easy_vqa"),
    )
    samples, images = catalog.load("samples"), catalog.load("images")
    assert len(samples) > 0 and len(images["image_ids"]) == samples["image_id"].nunique()
