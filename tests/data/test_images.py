"""Lazy decoding in DataLoader workers with torchvision transforms v2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layouts import draw

from multimodal_doubleloop.data.batching import BatchDataset, EncodedSplit, ImageMajorBatches
from multimodal_doubleloop.data.image_root import ImageRoot
from multimodal_doubleloop.data.images import (
    AugmentConfig,
    InMemoryImages,
    LazyImages,
    build_image_index,
    decode_all,
    image_store,
)


@pytest.fixture
def root(tmp_path) -> ImageRoot:
    return ImageRoot(str(tmp_path))


@pytest.fixture
def files(tmp_path):
    """Three image files, as paths relative to `root`."""
    paths = []
    for i, (color, shape) in enumerate([("red", "square"), ("blue", "circle"), ("green", "square")]):
        name = f"{i}.{'png' if i % 2 else 'jpg'}"
        draw(tmp_path / name, color, shape, size=48)
        paths.append(name)
    return paths


def test_lazy_store_holds_paths_only_and_decodes_like_pil(root, files):
    store = LazyImages(root, files, size=32)
    assert store.paths.dtype.kind == "U"  # one array, no per-path objects for workers to copy
    images = store.get(torch.tensor([2, 0]))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    reference = torch.from_numpy(decode_all(root, [files[2], files[0]], 32)).permute(0, 3, 1, 2) / 255
    assert (images - reference).abs().mean() < 0.02  # antialiased resize vs PIL bilinear


def test_lazy_decoding_in_dataloader_workers(root, files):
    split = EncodedSplit(
        image_rows=torch.tensor([0, 0, 1, 2, 2]),
        input_ids=torch.ones(5, 4, dtype=torch.long),
        attention_mask=torch.ones(5, 4, dtype=torch.long),
        labels=torch.zeros(5, dtype=torch.long),
    )
    store = LazyImages(root, files, size=32)
    sampler = ImageMajorBatches(split.image_rows, 2, shuffle=False)
    loader = torch.utils.data.DataLoader(BatchDataset(split, store), sampler=sampler, batch_size=None, num_workers=2)
    batches = list(loader)
    assert [b["images"].shape[0] for b in batches] == [2, 1]
    assert torch.equal(batches[1]["images"], store.get(torch.tensor([2])))


def test_augmentation_only_in_the_training_store(root, files):
    index = build_image_index(
        _table(files), root, 32, in_memory=False, augment=AugmentConfig(hflip=1.0, crop_scale=(0.5, 0.9))
    )
    plain, train = image_store(index), image_store(index, train=True)
    assert plain.augment is None and train.augment is not None
    rows = torch.tensor([0])
    assert torch.equal(plain.get(rows), plain.get(rows))  # deterministic without augmentation
    torch.manual_seed(0)
    assert not torch.equal(train.get(rows), plain.get(rows))
    assert train.get(rows).shape == (1, 3, 32, 32)


def test_in_memory_augmentation_keeps_shape_and_default_is_identity():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    plain = InMemoryImages(pixels, AugmentConfig())  # all off: exactly the decoded pixels
    assert torch.equal(plain.get(torch.tensor([1])), torch.from_numpy(pixels[[1]]).permute(0, 3, 1, 2) / 255.0)
    flipped = InMemoryImages(pixels, AugmentConfig(hflip=1.0)).get(torch.tensor([1]))
    assert torch.equal(flipped, plain.get(torch.tensor([1])).flip(-1))


def test_unreadable_and_missing_files_name_the_path(tmp_path, root):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    store = LazyImages(root, ["bad.jpg", "gone.png"], size=8)
    with pytest.raises(ValueError, match="cannot decode image .*bad.jpg"):
        store.get(torch.tensor([0]))
    with pytest.raises(FileNotFoundError, match=f"image file not found: {tmp_path}/gone.png"):
        store.get(torch.tensor([1]))


def test_images_on_an_fsspec_filesystem_decode_in_workers_as_on_disk(tmp_path, root, files):
    """memory:// stands for s3:// or gs://: the same bytes give the same pixels, in
    DataLoader workers too (the root pickles as its URL)."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for name in files:
        memory.pipe(f"/remote/{name}", (tmp_path / name).read_bytes())
    remote = ImageRoot("memory://remote")
    assert remote.files() == sorted(files)
    local = LazyImages(root, files, size=32).get(torch.tensor([0, 1, 2]))
    assert torch.equal(LazyImages(remote, files, size=32).get(torch.tensor([0, 1, 2])), local)
    index = build_image_index(_table(files), remote, 32, in_memory=True)
    assert np.array_equal(index["pixels"], decode_all(root, files, 32))


def test_augment_ranges_are_checked():
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.9, 0.5))


def _table(paths):
    import pandas as pd

    return pd.DataFrame({"image_id": [str(i) for i in range(len(paths))], "image_path": paths})
