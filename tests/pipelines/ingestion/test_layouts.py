"""The train pipeline (ingestion -> tokenization -> training -> evaluation) on tiny data
sets written in the COCO captions and ImageFolder layouts, on an in-memory catalog."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MODEL, run_pipeline
from kedro.pipeline import Pipeline
from layouts import make_coco, make_image_folder, raw_datasets

from multimodal_doubleloop.pipelines import evaluation, ingestion, tokenization, training


def train_pipeline() -> Pipeline:
    stages = (ingestion, tokenization, training, evaluation)
    return sum((s.create_pipeline() for s in stages), start=Pipeline([]))


def run(raw, ingestion_params, tasks_params, model_params, training_params):
    """The train stages on an in-memory catalog whose raw inputs are the project's own
    raw catalog entries for the source (`raw`: `layouts.raw_datasets`)."""
    return run_pipeline(
        train_pipeline(),
        {
            "params:ingestion": ingestion_params,
            "params:tasks": tasks_params,
            "params:tokenization": {"vocab_size": 120, "min_frequency": 1, "max_length": 12},
            "params:model": model_params,
            "params:training": {**training_params, "epochs": 2, "images_per_batch": 4},
        },
        raw,
    )


def test_coco_layout_trains_retrieval_and_captioning(tmp_path, tasks_params, model_params, training_params):
    make_coco(tmp_path / "coco")
    ingestion_params = {
        "source": "coco_captions",
        "val_fraction": 0.2,
        "image_size": 64,
        "in_memory_images": False,  # decoded lazily, in two DataLoader workers
        "coco_captions": {"splits": {"train": "train2017", "test": "val2017"}},
    }
    # the shipped retrieval definition names easy-VQA's class column; COCO has none, so
    # the run has no zero-shot metric rather than an error
    tasks_params["active"] = ["retrieval", "caption"]
    raw = raw_datasets("coco_captions", tmp_path)
    catalog = run(raw, ingestion_params, tasks_params, model_params, {**training_params, "num_workers": 2})

    samples = catalog.load("samples")
    assert set(samples["source"]) == {"coco_captions"} and len(samples) == 36
    assert catalog.load("images")["pixels"] is None  # nothing decoded into memory
    assert catalog.load("quarantine").empty
    heads = catalog.load("trained_model")["config"]["heads"]
    assert {k: v["type"] for k, v in heads.items()} == {"retrieval": "contrastive", "caption": "caption"}
    metrics = catalog.load("metrics")
    assert metrics["test_samples"] == 12  # 6 val2017 images x 2 captions
    assert metrics["test_retrieval_images"] == 6 and metrics["test_retrieval_texts"] == 12
    assert "test_retrieval_zero_shot_accuracy" not in metrics
    for key in ("i2t_recall_at_1", "i2t_recall_at_10", "t2i_recall_at_5", "caption_bleu4"):
        assert key in {k.removeprefix("test_retrieval_").removeprefix("test_") for k in metrics}
    assert metrics["test_retrieval_i2t_recall_at_10"] == 1.0  # 6 images: all in the top 10
    assert 0 <= metrics["test_caption_exact_match"] <= 1 and np.isfinite(metrics["test_caption_cider_d"])
    samples_out = catalog.load("caption_samples")
    assert len(samples_out) == 6 and all(len(s["references"]) == 2 for s in samples_out)


def test_image_folder_layout_trains_classification_and_zero_shot(
    tmp_path, tasks_params, model_params, training_params
):
    make_image_folder(tmp_path / "image_folder")
    ingestion_params = {
        "source": "image_folder",
        "val_fraction": 0.2,
        "image_size": 64,
        "in_memory_images": True,
        "augment": {"hflip": 0.5, "crop_scale": [0.8, 1.0]},
        "image_folder": {"splits": {"train": "train", "test": "val"}},
    }
    tasks_params["active"] = ["answer", "retrieval"]
    tasks_params["definitions"]["retrieval"].update(zero_shot="answer", prompt="a photo of a {}")
    catalog = run(raw_datasets("image_folder", tmp_path), ingestion_params, tasks_params, model_params, training_params)

    heads = catalog.load("trained_model")["config"]["heads"]
    assert heads["answer"]["input"] == "image" and heads["answer"]["num_outputs"] == 3
    metrics = catalog.load("metrics")
    assert metrics["test_samples"] == 9
    assert metrics["test_retrieval_zero_shot_classes"] == 3
    for key in ("test_answer_accuracy", "test_answer_macro_f1", "test_retrieval_zero_shot_accuracy"):
        assert 0 <= metrics[key] <= 1
    # the prompts name the class, so every image's text is one of three: recall@5 is certain
    assert metrics["test_retrieval_i2t_recall_at_5"] == 1.0
    assert catalog.load("caption_samples") == []


def test_quarantined_records_leave_the_run_and_land_in_the_report(
    tmp_path, tasks_params, model_params, training_params
):
    root = make_image_folder(tmp_path / "image_folder")
    (root / "train" / "red_square" / "broken.png").write_bytes(b"\x89PNG but not really")
    ingestion_params = {"source": "image_folder", "val_fraction": 0.0, "image_size": 64, "on_bad_input": "quarantine"}
    raw = raw_datasets("image_folder", tmp_path)
    catalog = run_pipeline(
        ingestion.create_pipeline(),
        {"params:ingestion": ingestion_params, "params:tasks": tasks_params, "params:model": TINY_MODEL},
        raw,
    )
    report = catalog.load("quarantine")
    assert list(report["reason"]) == ["unreadable_image"] and report["image_path"][0].endswith("broken.png")
    assert catalog.load("quarantine_summary")["by_reason"] == {"unreadable_image": 1}
    assert not catalog.load("samples")["image_path"].str.endswith("broken.png").any()
    with pytest.raises(Exception, match="unreadable_image: 1"):
        run_pipeline(
            ingestion.create_pipeline(),
            {"params:ingestion": {**ingestion_params, "on_bad_input": "error"}, "params:tasks": tasks_params, "params:model": TINY_MODEL},
            raw,
        )
