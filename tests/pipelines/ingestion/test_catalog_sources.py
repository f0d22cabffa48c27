"""Raw inputs through the catalog only: COCO captions and a table on an fsspec
in-memory filesystem (standing for s3:// or gs://), read with the raw entries the
project ships, give the same samples and pixels as the same files on local disk."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_MODEL, run_pipeline
from layouts import copy_to_memory, make_coco, make_table, raw_datasets

from multimodal_doubleloop.pipelines import ingestion

CASES = {  # layout writer, its folder under data/01_raw, the image root under it, params, tasks
    "coco_captions": (make_coco, "coco", "coco", {"source": "coco_captions"}, ["retrieval"]),
    "table": (make_table, "table", "table/images", {"source": "table", "table": {"text": "question", "answer": "label"}},
              ["answer"]),
}


@pytest.mark.parametrize("source", sorted(CASES))
def test_remote_raw_inputs_read_like_local_ones(tmp_path, tasks_params, source):
    make, folder, images, params, active = CASES[source]
    make(tmp_path / folder)
    url = copy_to_memory(tmp_path, f"memory://{source}_raw")
    params = {**params, "val_fraction": 0.2, "image_size": 0, "in_memory_images": True}
    tasks_params["active"] = active
    inputs = {"params:ingestion": params, "params:tasks": tasks_params, "params:model": TINY_MODEL}
    local = run_pipeline(ingestion.create_pipeline(), inputs, raw_datasets(source, tmp_path))
    remote = run_pipeline(ingestion.create_pipeline(), inputs, raw_datasets(source, url))
    assert remote.load("samples").equals(local.load("samples")) and len(local.load("samples")) > 0
    assert remote.load("images")["root"].url == f"{url}/{images}"
    assert np.array_equal(remote.load("images")["pixels"], local.load("images")["pixels"])
