"""Image decoding: an in-memory store for small data sets, lazy decoding for large ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


def decode_image(path: str, size: int) -> np.ndarray:
    """Read any PIL-readable file as RGB uint8 (size, size, 3); clear error if unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image file not found: {path}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc


def decode_all(paths: Sequence[str], size: int) -> np.ndarray:
    """Decode every path into one (N, size, size, 3) uint8 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size)
    return out


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (M, H, W, 3) -> float (M, 3, H, W) in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)


class InMemoryImages:
    """All images decoded once, kept as a uint8 tensor (N, H, W, 3)."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels))

    def __len__(self) -> int:
        return len(self.pixels)

    def get(self, rows: torch.Tensor) -> torch.Tensor:
        return to_float(self.pixels[rows])


class LazyImages:
    """Decode from disk on demand (in DataLoader workers), so memory stays flat."""

    def __init__(self, paths: Sequence[str], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, rows: torch.Tensor) -> torch.Tensor:
        pixels = np.stack([decode_image(self.paths[int(r)], self.size) for r in rows])
        return to_float(torch.from_numpy(pixels))


def build_image_index(table, size: int, in_memory: bool) -> dict:
    """The image data of a sample table: unique images in first-seen order, decoded
    into memory when `in_memory` (small data sets) or left as paths to decode lazily."""
    unique = table.drop_duplicates("image_id")
    paths = unique["image_path"].tolist()
    return {
        "image_ids": unique["image_id"].tolist(),
        "paths": paths,
        "size": size,
        "pixels": decode_all(paths, size) if in_memory else None,
    }


def image_store(images: dict) -> InMemoryImages | LazyImages:
    if images.get("pixels") is not None:
        return InMemoryImages(images["pixels"])
    return LazyImages(images["paths"], images["size"])
