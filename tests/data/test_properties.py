"""Property-based checks of tokenization and image decoding / collation: arbitrary
input either works or fails with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from multimodal_doubleloop.data.batching import EncodedSplit, collate
from multimodal_doubleloop.data.image_root import ImageRoot
from multimodal_doubleloop.data.images import InMemoryImages, LazyImages, decode_image
from multimodal_doubleloop.data.tokenizer import PAD_ID, encode, train_tokenizer

TOKENIZER = train_tokenizer(["what color is the shape?", "is there a red circle?", "héllo wörld 你好"], 200)
VOCAB = TOKENIZER.get_vocab_size()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=3000), min_size=1, max_size=8), st.integers(2, 40))
def test_encode_any_unicode(texts, max_length):
    ids, mask = encode(TOKENIZER, texts, max_length)
    assert ids.shape == mask.shape == (len(texts), max_length)
    assert ((ids >= 0) & (ids < VOCAB)).all()
    assert mask[:, 0].all()  # [CLS] always present, even for ""
    assert (ids[mask == 0] == PAD_ID).all()
    # the mask is a prefix of ones
    assert (np.diff(mask.astype(int), axis=1) <= 0).all()


MODES = st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "CMYK", "LA"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(MODES, st.integers(1, 300), st.integers(1, 300), st.sampled_from(["PNG", "JPEG", "BMP", "TIFF"]))
def test_decode_any_mode_and_size(tmp_path, mode, width, height, fmt):
    image = Image.new(mode, (width, height))
    path = tmp_path / f"x.{fmt.lower()}"
    try:
        image.save(path, fmt)
    except (OSError, KeyError, ValueError):
        return  # PIL cannot write this mode in this format; nothing to decode
    pixels = decode_image(ImageRoot(str(tmp_path)), path.name, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


def test_huge_and_tiny_images(tmp_path):
    for size in [(1, 1), (6000, 3)]:
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("RGB", size, (10, 200, 30)).save(path)
        pixels = decode_image(ImageRoot(str(tmp_path)), path.name, 16)
        assert pixels.shape == (16, 16, 3) and tuple(pixels[0, 0]) == (10, 200, 30)


def test_unreadable_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"this is text")
    with pytest.raises(ValueError, match="not_an_image.png"):
        decode_image(ImageRoot(str(tmp_path)), bad.name, 16)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        decode_image(ImageRoot(str(tmp_path)), "missing.png", 16)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.integers(1, 12), st.data())
def test_collate_any_image_major_selection(image_of_sample, length, data):
    n = len(image_of_sample)
    lengths = data.draw(st.lists(st.integers(1, length), min_size=n, max_size=n))
    mask = (torch.arange(length)[None] < torch.tensor(lengths)[:, None]).long()
    split = EncodedSplit(torch.tensor(image_of_sample), torch.randint(1, 50, (n, length)) * mask, mask,
                         torch.zeros(n, dtype=torch.long))
    images = InMemoryImages(np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8))
    chosen = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    batch = collate(split, images, np.array(chosen))
    # every text points at its own image, and the images are unique
    assert torch.equal(batch["images"][batch["image_index"]], images.get(split.image_rows[chosen]))
    assert len(batch["images"]) == len(set(split.image_rows[chosen].tolist()))
    assert batch["input_ids"].shape[1] == max(lengths[i] for i in chosen)


def test_lazy_images_match_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    paths = []
    for i, a in enumerate(arrays):
        paths.append(f"{i}.png")
        Image.fromarray(a).save(tmp_path / paths[-1])
    rows = torch.tensor([2, 0])
    assert torch.equal(LazyImages(ImageRoot(str(tmp_path)), paths, 8).get(rows), InMemoryImages(arrays).get(rows))
