"""Image-major batching: sample images, take all their texts.

The vision tower then runs once per unique image in a batch, and each text's
tokens cross-attend to its own image's tokens through `image_index`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class EncodedSplit:
    """One split as tensors: what training and evaluation iterate over."""

    image_rows: torch.Tensor  # (S,) row of each sample's image in the image store
    input_ids: torch.Tensor  # (S, T) int64, padded with pad_id
    attention_mask: torch.Tensor  # (S, T) int64
    labels: torch.Tensor  # (S,) int64 answer index, -1 where unknown
    # Per-sample targets of the tasks beyond the answer (training.tasks), keyed as the
    # batch carries them ("target.<task>"); empty for answer classification alone.
    targets: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def first_images(split: EncodedSplit, n: int) -> EncodedSplit:
    """The samples of the first `n` distinct images of `split` (all when n == 0)."""
    if n == 0:
        return split
    keep = torch.isin(split.image_rows, torch.unique(split.image_rows)[:n])
    return EncodedSplit(
        split.image_rows[keep],
        split.input_ids[keep],
        split.attention_mask[keep],
        split.labels[keep],
        {name: target[keep] for name, target in split.targets.items()},
    )


class ImageMajorBatches:
    """Yields lists of sample indices, `images_per_batch` unique images at a time.

    Each image comes with all its texts, or with `texts_per_image` of them drawn anew
    every epoch (when it has more): the vision tower's work per step stays, the text
    tower's and fusion's shrink, and every image is still seen once per epoch.
    Order and draws depend only on (seed, epoch), so a resumed run replays them
    exactly; with `world_size > 1` each rank takes a disjoint, equally long share of
    the images.
    """

    def __init__(
        self,
        image_rows: torch.Tensor,
        images_per_batch: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        texts_per_image: int = 0,
    ):
        if images_per_batch < 1:
            raise ValueError(f"images_per_batch={images_per_batch} must be >= 1")
        if texts_per_image < 0:
            raise ValueError(f"texts_per_image={texts_per_image} must be >= 0 (0 = all)")
        rows = image_rows.numpy()
        order = np.argsort(rows, kind="stable")
        unique, starts = np.unique(rows[order], return_index=True)
        self.groups = np.split(order, starts[1:])  # sample indices per unique image
        self.images_per_batch, self.shuffle, self.seed = images_per_batch, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.texts_per_image = texts_per_image
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order; `start_batch` skips batches already trained on."""
        self.epoch, self.start_batch = epoch, start_batch

    def _image_order(self) -> np.ndarray:
        n = len(self.groups)
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.world_size > 1:
            per_rank = n // self.world_size  # equal shares keep ranks in lockstep
            order = order[: per_rank * self.world_size][self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._image_order())
        full, rest = divmod(n, self.images_per_batch)
        return full + (0 if self.drop_last or not rest else 1)

    def __iter__(self):
        order = self._image_order()
        for b in range(self.start_batch, len(self)):
            chosen = order[b * self.images_per_batch : (b + 1) * self.images_per_batch]
            yield np.concatenate([self._texts(i) for i in chosen])

    def _texts(self, image: int) -> np.ndarray:
        """The sample indices of `image` in this epoch: all, or `texts_per_image` of them."""
        group, k = self.groups[image], self.texts_per_image
        if not k or len(group) <= k:
            return group
        rng = np.random.default_rng((self.seed, self.epoch, int(image)))
        return np.sort(rng.choice(group, k, replace=False))


def collate(split: EncodedSplit, images, sample_idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Build a model batch: unique images once, texts trimmed to the longest in batch.

    A split with task targets adds them and "image_rows" (M,), each batch image's row
    in the image store."""
    idx = torch.as_tensor(sample_idx)
    rows = split.image_rows[idx]
    unique_rows, image_index = torch.unique(rows, return_inverse=True)
    mask = split.attention_mask[idx]
    length = max(int(mask.sum(1).max()), 1)
    batch = {
        "images": images.get(unique_rows),  # (M, 3, H, W)
        "image_index": image_index,  # (B,)
        "input_ids": split.input_ids[idx, :length],  # (B, T)
        "attention_mask": mask[:, :length],  # (B, T)
        "labels": split.labels[idx],  # (B,)
    }
    if split.targets:
        batch["image_rows"] = unique_rows  # (M,)
        batch.update({key: target[idx] for key, target in split.targets.items()})
    return batch


class BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches (pass `batch_size=None`
    and an `ImageMajorBatches` sampler to `DataLoader`), so workers decode images."""

    def __init__(self, split: EncodedSplit, images):
        self.split, self.images = split, images

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, sample_idx) -> dict[str, torch.Tensor]:
        return collate(self.split, self.images, sample_idx)


def batch_stream(split: EncodedSplit, images, sampler: ImageMajorBatches, num_workers: int):
    """The batches of `sampler`, collated in-process or by `num_workers` DataLoader workers."""
    if num_workers == 0:
        return (collate(split, images, idx) for idx in sampler)
    return iter(
        torch.utils.data.DataLoader(
            BatchDataset(split, images),
            sampler=sampler,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=torch.cuda.is_available(),
        )
    )


def to_device(batch: dict, device: torch.device) -> dict:
    """Non-blocking copies (from pinned memory when DataLoader workers pin it); images
    channels-last on CUDA, where the convolutional stem runs faster in that layout."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if device.type == "cuda" and "images" in out:
        out["images"] = out["images"].contiguous(memory_format=torch.channels_last)
    return out


def image_rows(table, image_ids) -> torch.Tensor:
    """Row of each sample's image in the image store ordered as `image_ids`."""
    position = {image_id: i for i, image_id in enumerate(image_ids)}
    return torch.from_numpy(table["image_id"].map(position).to_numpy(dtype=np.int64, copy=True))


def encoded_split(table, encoded: dict, image_ids, answer_vocab: list[str], split: str) -> EncodedSplit:
    """Select one split of the table as tensors; answers outside the vocabulary get -1."""
    mask = (table["split"] == split).to_numpy()
    answer_index = {a: i for i, a in enumerate(answer_vocab)}
    labels = table.loc[mask, "answer"].map(answer_index).fillna(-1).to_numpy(dtype=np.int64, copy=True)
    return EncodedSplit(
        image_rows=image_rows(table.loc[mask], image_ids),
        input_ids=torch.as_tensor(encoded["input_ids"][mask], dtype=torch.long),
        attention_mask=torch.as_tensor(encoded["attention_mask"][mask], dtype=torch.long),
        labels=torch.as_tensor(labels),
    )
