"""No pickles: every intermediate loads without unpickling, and the image index and
encoded texts round-trip exactly through their catalog datasets."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from kedro.io import DatasetError

from multimodal_doubleloop.data.image_root import ImageRoot
from multimodal_doubleloop.io import ImageIndexDataset, ImageRootDataset, NpzDataset

CONF = Path(__file__).resolve().parents[2] / "conf"


def _types(entry) -> list[str]:
    """The dataset type of a catalog entry and of any dataset it wraps."""
    found = []
    if isinstance(entry, dict):
        if isinstance(entry.get("type"), str):
            found.append(entry["type"])
        found += _types(entry.get("dataset"))
    elif isinstance(entry, str):
        found.append(entry)
    return found


def test_no_catalog_entry_is_a_pickle():
    for path in CONF.glob("*/catalog*.yml"):
        for name, entry in yaml.safe_load(path.read_text()).items():
            assert not any("pickle" in t.lower() for t in _types(entry)), f"{path.parent.name}/{name}"


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an intermediate was unpickled")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


@pytest.mark.parametrize("in_memory", [True, False])
def test_image_index_round_trip(tmp_path, images, easy_vqa_raw, no_unpickling, in_memory):
    index = {**images, "pixels": images["pixels"] if in_memory else None}
    dataset = ImageIndexDataset(str(tmp_path / "images"))
    dataset.save(index)
    loaded = dataset.load()
    assert loaded["image_ids"] == index["image_ids"] and loaded["paths"] == index["paths"]
    assert loaded["size"] == index["size"] and loaded["augment"] == index["augment"]
    assert loaded["root"] == easy_vqa_raw[1]  # the URL only: credentials come from the entry
    if in_memory:
        assert np.array_equal(loaded["pixels"], index["pixels"])
    else:
        assert loaded["pixels"] is None and not (tmp_path / "images" / "pixels.npy").exists()


def test_lazy_index_over_an_in_memory_one_drops_the_stale_pixels(tmp_path, images):
    dataset = ImageIndexDataset(str(tmp_path / "images"))
    dataset.save(images)
    dataset.save({**images, "pixels": None})
    assert dataset.load()["pixels"] is None


def test_encoded_texts_round_trip_without_objects(tmp_path, tokenized, no_unpickling):
    encoded = tokenized["encoded_texts"]
    dataset = NpzDataset(str(tmp_path / "encoded.npz"))
    dataset.save(encoded)
    loaded = dataset.load()
    assert set(loaded) == set(encoded) and loaded["sample_id"].dtype.kind == "U"
    for key in encoded:
        assert np.array_equal(loaded[key], encoded[key])
    with pytest.raises(DatasetError, match=r"array\(s\) \['x'\] hold Python objects"):
        dataset.save({"x": np.array([{"a": 1}], dtype=object)})


def test_image_root_dataset_is_read_only_and_checks_the_folder(tmp_path):
    root = ImageRootDataset(str(tmp_path), credentials={"auto_mkdir": False}).load()
    assert root == ImageRoot(str(tmp_path)) and root.storage_options == {"auto_mkdir": False}
    with pytest.raises(DatasetError, match="read-only"):
        ImageRootDataset(str(tmp_path)).save({"an": "image"})
    with pytest.raises(DatasetError, match="is not a folder"):
        ImageRootDataset(str(tmp_path / "nowhere")).load()
