"""TorchModelDataset: a trained model's config, weights and labels, loaded without unpickling code."""

from __future__ import annotations

import pickle

import pytest
import torch
from kedro.io.core import DatasetError

from multimodal_doubleloop.io import TorchModelDataset


def test_round_trip_keeps_config_weights_and_labels(tmp_path):
    data = {"config": {"vision": {"dim": 8}}, "state_dict": {"w": torch.arange(4.0)}, "labels": {"answer": ["a", "b"]}}
    dataset = TorchModelDataset(str(tmp_path / "model.pt"))
    dataset.save(data)
    loaded = dataset.load()
    assert loaded["config"] == data["config"] and loaded["labels"] == data["labels"]
    assert torch.equal(loaded["state_dict"]["w"], data["state_dict"]["w"])


class _Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_a_file_with_code_in_it_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"config": {}, "state_dict": {}, "evil": _Payload()}, path, pickle_module=pickle)
    with pytest.raises((DatasetError, pickle.UnpicklingError)):
        TorchModelDataset(str(path)).load()
