"""Image decoding: an in-memory store for small data sets, lazy decoding for large ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from .image_root import EmbeddedImages, ImageRoot


def decode_image(root: ImageRoot, path: str, size: int) -> np.ndarray:
    """Read any PIL-readable file under `root` as RGB uint8 (size, size, 3); clear error
    if it is missing or unreadable."""
    with root.open(path) as f:
        try:
            with Image.open(f) as im:
                return to_rgb_array(im, size)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image {root.where(path)}: {exc}") from exc


def to_rgb_array(im: Image.Image, size: int) -> np.ndarray:
    """An opened image as RGB uint8 (size, size, 3), resized bilinearly when needed: the
    one preprocessing that training and inference share."""
    im = im.convert("RGB")
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def decode_all(root: ImageRoot, paths: Sequence[str], size: int) -> np.ndarray:
    """Decode every path (relative to `root`) into one (N, size, size, 3) uint8 array."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(root, path, size)
    return out


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (M, H, W, 3) -> float (M, 3, H, W) in [0, 1]."""
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)


@dataclass
class AugmentConfig:
    """Training-time augmentation (torchvision transforms v2); all off by default."""

    hflip: float = 0.0  # probability of a horizontal flip
    crop_scale: tuple[float, float] = (1.0, 1.0)  # RandomResizedCrop area range; (1, 1) = none
    color_jitter: float = 0.0  # brightness, contrast and saturation jitter strength; 0 = none

    def __post_init__(self):
        self.crop_scale = tuple(self.crop_scale)
        lo, hi = self.crop_scale
        if not (0 <= self.hflip <= 1 and 0 < lo <= hi <= 1 and 0 <= self.color_jitter < 1):
            raise ValueError(
                f"augment: hflip={self.hflip} must be in [0, 1], crop_scale={self.crop_scale} "
                f"in (0, 1] ascending, color_jitter={self.color_jitter} in [0, 1)"
            )

    @property
    def enabled(self) -> bool:
        return self.hflip > 0 or self.crop_scale != (1.0, 1.0) or self.color_jitter > 0

    def transform(self, size: int) -> v2.Compose:
        """uint8 or float (3, H, W) -> augmented (3, size, size), same dtype."""
        ops = []
        if self.crop_scale != (1.0, 1.0):
            ops.append(v2.RandomResizedCrop((size, size), scale=self.crop_scale, antialias=True))
        else:
            ops.append(v2.Resize((size, size), antialias=True))
        if self.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(self.hflip))
        if self.color_jitter > 0:
            j = self.color_jitter
            ops.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        return v2.Compose(ops)


class InMemoryImages:
    """All images decoded once, kept as a uint8 tensor (N, H, W, 3)."""

    def __init__(self, pixels: np.ndarray, augment: AugmentConfig | None = None):
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels))
        self.augment = augment if augment is not None and augment.enabled else None
        if self.augment is not None:
            self._transform = self.augment.transform(self.pixels.shape[1])

    def __len__(self) -> int:
        return len(self.pixels)

    def get(self, rows: torch.Tensor) -> torch.Tensor:
        images = to_float(self.pixels[rows])  # (M, 3, H, W)
        if self.augment is None:
            return images
        return torch.stack([self._transform(im) for im in images])  # each image drawn anew


class LazyImages:
    """Decode from disk on demand, in DataLoader workers, so memory stays flat as the
    data grows: the store holds only paths, in one numpy array (no per-path Python
    objects whose reference counts would copy pages into every forked worker)."""

    def __init__(self, root: ImageRoot, paths: Sequence[str], size: int, augment: AugmentConfig | None = None):
        self.root = root
        self.paths = np.asarray(paths, dtype=np.str_)
        self.size = size
        self.augment = augment if augment is not None and augment.enabled else None
        self._transform = (self.augment or AugmentConfig()).transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, path: str) -> torch.Tensor:
        """One image as uint8 (3, size, size) through the transform. JPEGs are decoded
        straight at the smallest DCT scale still >= size (PIL `draft`), which makes
        COCO-sized photos several times cheaper."""
        with self.root.open(path) as f:
            try:
                with Image.open(f) as im:
                    im.draft("RGB", (self.size, self.size))
                    pixels = v2.functional.pil_to_tensor(im.convert("RGB"))  # (3, H, W) uint8
            except (UnidentifiedImageError, OSError) as exc:
                raise ValueError(f"cannot decode image {self.root.where(path)}: {exc}") from exc
        return self._transform(pixels)

    def get(self, rows: torch.Tensor) -> torch.Tensor:
        pixels = torch.stack([self.decode(str(self.paths[int(r)])) for r in rows])
        return pixels.float().div_(255.0)  # (M, 3, size, size)


def build_image_index(
    table, root: ImageRoot | EmbeddedImages, size: int, in_memory: bool, augment: AugmentConfig | None = None
) -> dict:
    """The image data of a sample table: unique images in first-seen order, decoded
    into memory when `in_memory` (small data sets) or left as paths under `root` to
    decode lazily, and the training augmentation."""
    unique = table.drop_duplicates("image_id")
    paths = unique["image_path"].tolist()
    return {
        "image_ids": unique["image_id"].tolist(),
        "paths": paths,
        "size": size,
        "pixels": decode_all(root, paths, size) if in_memory else None,
        "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(augment or AugmentConfig()).items()},
        "root": root if isinstance(root, ImageRoot) else None,  # embedded images live in `pixels`
    }


def image_store(images: dict, train: bool = False) -> InMemoryImages | LazyImages:
    """The store of an image index; `train=True` applies its augmentation."""
    augment = AugmentConfig(**images["augment"]) if train and images.get("augment") else None
    if images.get("pixels") is not None:
        return InMemoryImages(images["pixels"], augment)
    if images.get("root") is None:
        raise ValueError("the image index has no pixels and no image root to decode them from; rerun decode_images")
    return LazyImages(images["root"], images["paths"], images["size"], augment)
