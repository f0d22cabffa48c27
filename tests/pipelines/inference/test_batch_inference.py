"""`kedro run --pipeline=inference`: a request table of any length scored a batch at a
time, read and written through `ParquetBatchesDataset`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import run_pipeline
from kedro.io import DatasetError
from test_inference import _model, _predict, _test_requests

from multimodal_doubleloop.data.requests import RequestError
from multimodal_doubleloop.io import ParquetBatchesDataset
from multimodal_doubleloop.pipelines.inference import create_batch_pipeline
from multimodal_doubleloop.pipelines.inference.nodes import InvalidRequestError


def test_batches_are_read_and_written_a_batch_at_a_time(tmp_path):
    table = pd.DataFrame({"image": [f"i{i}" for i in range(10)], "text": [f"q{i}" for i in range(10)]})
    table.to_parquet(tmp_path / "requests.parquet", row_group_size=3)
    batches = list(ParquetBatchesDataset(str(tmp_path / "requests.parquet"), batch_rows=4).load())
    assert [len(b) for b in batches] == [4, 4, 2]
    pd.testing.assert_frame_equal(pd.concat(batches, ignore_index=True), table)

    out = ParquetBatchesDataset(str(tmp_path / "out"), batch_rows=4)
    for i in range(3):
        out.save(table.iloc[3 * i : 3 * i + 3])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]  # fmt: skip
    pd.testing.assert_frame_equal(pd.concat(out.load(), ignore_index=True), table.head(9))
    again = ParquetBatchesDataset(str(tmp_path / "out"))  # the next run: only its own parts remain
    again.save(table.head(1))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["part-00000.parquet"]
    with pytest.raises(DatasetError, match="batch_rows=0 must be >= 1"):
        ParquetBatchesDataset(str(tmp_path / "x"), batch_rows=0)
    with pytest.raises(DatasetError, match="no Parquet file or folder"):
        ParquetBatchesDataset(str(tmp_path / "missing.parquet")).load()


@pytest.fixture
def table(samples):
    _, requests = _test_requests(samples)
    return pd.concat([requests] * 4, ignore_index=True)  # a few hundred rows, images repeated


def _score(tmp_path, table, model, tokenized, batch_rows=64):
    table.to_parquet(tmp_path / "requests.parquet")
    out = ParquetBatchesDataset(str(tmp_path / "predictions"))
    run_pipeline(
        create_batch_pipeline(),
        {
            "inference_model": model,
            "inference_tokenizer": tokenized["tokenizer"],
            "inference_answer_vocab": tokenized["answer_vocab"],
            "params:inference.top_k": 3,
        },
        {"batch_requests": ParquetBatchesDataset(str(tmp_path / "requests.parquet"), batch_rows), "batch_predictions": out},
    )
    return out


def test_batch_scoring_matches_the_served_pipeline_batch_by_batch(tmp_path, table, tokenized, model_params):
    model = _model(tokenized, model_params)
    out = _score(tmp_path, table, model, tokenized)
    parts = sorted((tmp_path / "predictions").iterdir())
    sizes = [len(pd.read_parquet(p)) for p in parts]
    assert sizes == [64] * (len(table) // 64) + ([len(table) % 64] if len(table) % 64 else [])
    scored = pd.concat(out.load(), ignore_index=True)
    whole = _predict(table, model, tokenized)  # the served pipeline on the whole table at once
    assert scored["answer"].tolist() == whole["answer"].tolist()
    np.testing.assert_allclose(scored["probability"], whole["probability"], rtol=1e-5, atol=1e-6)


def test_an_empty_request_table_fails_rather_than_leave_old_predictions(tmp_path, table, tokenized, model_params):
    model = _model(tokenized, model_params)
    _score(tmp_path, table.head(5), model, tokenized)
    with pytest.raises(RequestError, match="has no rows: nothing to score"):
        _score(tmp_path, table.head(0), model, tokenized)


def test_a_bad_row_is_named_by_its_row_in_the_whole_table(tmp_path, table, tokenized, model_params):
    table = table.copy()
    table.loc[130, "text"] = ""
    with pytest.raises(InvalidRequestError, match="row 130: column 'text' is empty"):
        _score(tmp_path, table, _model(tokenized, model_params), tokenized)
