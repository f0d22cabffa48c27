"""`data.batching.ImageMajorBatches`: image-major batches, their order (seed, epoch),
resuming mid-epoch, and the per-rank shards of distributed training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal_doubleloop.data.batching import ImageMajorBatches

# 12 images (0..11) with 1 to 3 texts each, the samples not sorted by image
ROWS = torch.tensor([5, 0, 11, 3, 7, 1, 0, 9, 2, 8, 5, 4, 6, 10, 3, 11, 5, 1, 7, 2])
N_IMAGES = 12


def batches(sampler: ImageMajorBatches) -> list[list[int]]:
    return [b.tolist() for b in sampler]


def images_of(batch, rows: torch.Tensor = ROWS) -> set[int]:
    return {int(rows[i]) for i in batch}


def image_sequence(sampler: ImageMajorBatches) -> list[int]:
    """The epoch's images in the order the batches take them."""
    seen = []
    for batch in sampler:
        for i in batch:
            if int(ROWS[i]) not in seen:
                seen.append(int(ROWS[i]))
    return seen


def test_batches_by_hand_without_shuffle():
    rows = torch.tensor([2, 0, 1, 0, 2, 3, 1])  # image 0: samples 1, 3; 1: 2, 6; 2: 0, 4; 3: 5
    sampler = ImageMajorBatches(rows, images_per_batch=2, shuffle=False)
    assert batches(sampler) == [[1, 3, 2, 6], [0, 4, 5]]
    assert len(sampler) == 2
    assert [b.dtype.kind for b in sampler] == ["i", "i"]
    last_dropped = ImageMajorBatches(rows, images_per_batch=3, shuffle=False, drop_last=True)
    assert batches(last_dropped) == [[1, 3, 2, 6, 0, 4]] and len(last_dropped) == 1


def test_images_per_batch_must_be_positive():
    with pytest.raises(ValueError, match="images_per_batch=0"):
        ImageMajorBatches(ROWS, 0, shuffle=False)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("images_per_batch", [1, 5, 12, 20])
def test_an_epoch_takes_every_sample_once_with_all_texts_of_an_image_together(shuffle, images_per_batch):
    sampler = ImageMajorBatches(ROWS, images_per_batch, shuffle=shuffle, seed=3)
    epoch = batches(sampler)
    assert len(epoch) == len(sampler) == -(-N_IMAGES // images_per_batch)
    assert sorted(i for b in epoch for i in b) == list(range(len(ROWS)))
    for b in epoch[:-1]:
        assert len(images_of(b)) == images_per_batch
    assert 1 <= len(images_of(epoch[-1])) <= images_per_batch
    seen = [images_of(b) for b in epoch]
    assert sum(len(s) for s in seen) == N_IMAGES  # no image is split across batches


@pytest.mark.parametrize(("images_per_batch", "full", "short"), [(5, 3, 2), (4, 3, 3), (7, 2, 1)])
def test_len_counts_the_short_last_batch_unless_dropped(images_per_batch, full, short):
    assert len(ImageMajorBatches(ROWS, images_per_batch, shuffle=True)) == full
    kept = ImageMajorBatches(ROWS, images_per_batch, shuffle=True, drop_last=True)
    assert len(kept) == short == len(batches(kept))
    assert all(len(images_of(b)) == images_per_batch for b in kept)


# order: seed and epoch


def test_same_seed_and_epoch_give_the_same_order_in_a_fresh_sampler():
    first = ImageMajorBatches(ROWS, 3, shuffle=True, seed=7)
    second = ImageMajorBatches(ROWS, 3, shuffle=True, seed=7)
    first.set_epoch(2)
    second.set_epoch(2)
    assert batches(first) == batches(second)
    assert batches(first) == batches(first)  # iterating again replays the epoch


def test_different_epochs_and_seeds_give_different_orders():
    sampler = ImageMajorBatches(ROWS, 3, shuffle=True, seed=7)
    orders = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.append(image_sequence(sampler))
    assert len({tuple(o) for o in orders}) == 4
    assert all(sorted(o) == list(range(N_IMAGES)) for o in orders)
    other_seed = ImageMajorBatches(ROWS, 3, shuffle=True, seed=8)
    other_seed.set_epoch(0)
    assert image_sequence(other_seed) != orders[0]


def test_shuffle_order_is_numpys_permutation_of_seed_plus_epoch():
    sampler = ImageMajorBatches(ROWS, 4, shuffle=True, seed=10)
    sampler.set_epoch(3)
    # images are numbered 0..11 here, so the permutation of groups is the image order
    assert image_sequence(sampler) == np.random.default_rng(13).permutation(N_IMAGES).tolist()


def test_without_shuffle_images_come_in_sorted_order_every_epoch():
    sampler = ImageMajorBatches(ROWS, 5, shuffle=False, seed=123)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        assert image_sequence(sampler) == list(range(N_IMAGES))
    # within an image, texts keep their order in the split
    assert batches(sampler)[0][:2] == [1, 6]


def test_texts_of_an_image_keep_their_split_order():
    rows = torch.from_numpy(np.random.default_rng(0).integers(0, 6, 400))  # many texts per image
    for shuffle in (False, True):
        for batch in ImageMajorBatches(rows, 2, shuffle=shuffle, seed=1):
            for image in images_of(batch, rows):
                of_image = [i for i in batch.tolist() if int(rows[i]) == image]
                assert of_image == (rows == image).nonzero().squeeze(1).tolist()


# resuming mid-epoch


@pytest.mark.parametrize("start_batch", [0, 1, 2, 3])
def test_start_batch_skips_exactly_the_consumed_batches(start_batch):
    sampler = ImageMajorBatches(ROWS, 4, shuffle=True, seed=1)
    sampler.set_epoch(5)
    full = batches(sampler)
    assert len(full) == 3
    resumed = ImageMajorBatches(ROWS, 4, shuffle=True, seed=1)
    resumed.set_epoch(5, start_batch=start_batch)
    assert batches(resumed) == full[start_batch:]
    assert len(resumed) == len(full)  # len is the whole epoch: steps per epoch do not shrink


def test_start_batch_past_the_end_yields_nothing():
    sampler = ImageMajorBatches(ROWS, 4, shuffle=True)
    sampler.set_epoch(0, start_batch=3)
    assert batches(sampler) == []
    sampler.set_epoch(0, start_batch=10)
    assert batches(sampler) == []


def test_next_set_epoch_starts_the_next_epoch_from_its_first_batch():
    sampler = ImageMajorBatches(ROWS, 4, shuffle=True, seed=2)
    sampler.set_epoch(1, start_batch=2)
    assert len(batches(sampler)) == 1
    sampler.set_epoch(2)
    reference = ImageMajorBatches(ROWS, 4, shuffle=True, seed=2)
    reference.set_epoch(2)
    assert batches(sampler) == batches(reference)


# distributed shards


def shards(world_size: int, images_per_batch: int, epoch: int = 0, rows=ROWS, **kw) -> list[ImageMajorBatches]:
    out = []
    for rank in range(world_size):
        sampler = ImageMajorBatches(rows, images_per_batch, rank=rank, world_size=world_size, **kw)
        sampler.set_epoch(epoch)
        out.append(sampler)
    return out


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("world_size", "images_per_batch"), [(2, 2), (2, 4), (3, 1), (3, 2), (4, 3), (2, 5)])
def test_rank_shards_make_up_the_single_process_global_batch(shuffle, world_size, images_per_batch):
    # 12 images divide evenly among 2, 3 and 4 ranks
    ranks = [batches(s) for s in shards(world_size, images_per_batch, epoch=1, shuffle=shuffle, seed=4)]
    single = ImageMajorBatches(ROWS, images_per_batch * world_size, shuffle=shuffle, seed=4)
    single.set_epoch(1)
    global_batches = batches(single)
    assert all(len(r) == len(global_batches) for r in ranks)
    for b, global_batch in enumerate(global_batches):
        parts = [set(r[b]) for r in ranks]
        for i in range(world_size):
            for j in range(i + 1, world_size):
                assert not parts[i] & parts[j]
                assert not images_of(parts[i]) & images_of(parts[j])  # an image lives on one rank
        assert set().union(*parts) == set(global_batch)
        assert sum(len(p) for p in parts) == len(global_batch)


@pytest.mark.parametrize("world_size", [2, 3, 4, 5, 7])
def test_ranks_get_equal_disjoint_shares_and_equal_lengths(world_size):
    samplers = shards(world_size, 2, shuffle=True, seed=9)
    per_rank = N_IMAGES // world_size
    lengths = {len(s) for s in samplers}
    assert lengths == {-(-per_rank // 2)}  # the same number of steps everywhere
    images = [set().union(*(images_of(b) for b in s)) if len(s) else set() for s in samplers]
    assert all(len(i) == per_rank for i in images)
    assert len(set().union(*images)) == per_rank * world_size  # disjoint
    for s in samplers:
        assert len(batches(s)) == len(s)
    drop = shards(world_size, 2, shuffle=True, seed=9, drop_last=True)
    assert {len(s) for s in drop} == {per_rank // 2}


def test_uneven_image_count_leaves_the_tail_of_the_epochs_order_out():
    # 12 images on 5 ranks: 2 each, the last 2 of the epoch's permutation sit out
    for epoch in (0, 1):
        samplers = shards(5, 2, epoch=epoch, shuffle=True, seed=0)
        covered = set().union(*(images_of(b) for s in samplers for b in s))
        permutation = np.random.default_rng(epoch).permutation(N_IMAGES).tolist()
        assert covered == set(permutation[:10])
    left_out = [
        set(range(N_IMAGES)) - set().union(*(images_of(b) for s in shards(5, 2, epoch=e, shuffle=True) for b in s))
        for e in (0, 1)
    ]
    assert left_out[0] != left_out[1]  # a different tail each epoch when shuffled


def test_lengths_agree_across_ranks_when_images_have_different_text_counts():
    rows = torch.tensor([0] * 5 + [1] + [2] * 3 + [3] + [4] * 4 + [5] + [6] * 2 + [7])  # 8 images
    samplers = shards(2, 3, rows=rows, shuffle=True, seed=5)
    assert len(samplers[0]) == len(samplers[1]) == 2  # 4 images per rank -> 3 + 1
    counts = [[len(b) for b in s] for s in samplers]
    assert [len(c) for c in counts] == [2, 2]
    assert sum(map(sum, counts)) == len(rows)


def test_rank_shards_resume_with_start_batch():
    full = [batches(s) for s in shards(3, 1, epoch=2, shuffle=True, seed=6)]
    for rank in range(3):
        sampler = ImageMajorBatches(ROWS, 1, shuffle=True, seed=6, rank=rank, world_size=3)
        sampler.set_epoch(2, start_batch=3)
        assert batches(sampler) == full[rank][3:]
        assert len(sampler) == 4


def test_world_size_one_is_the_plain_sampler():
    plain = ImageMajorBatches(ROWS, 3, shuffle=True, seed=2)
    one = ImageMajorBatches(ROWS, 3, shuffle=True, seed=2, rank=0, world_size=1)
    plain.set_epoch(4)
    one.set_epoch(4)
    assert batches(plain) == batches(one)


# texts_per_image: a subset of each image's texts, drawn anew every epoch


def test_texts_per_image_takes_that_many_of_each_image_and_all_of_smaller_ones():
    rows = torch.tensor([0] * 10 + [1] * 3 + [2] * 6)
    sampler = ImageMajorBatches(rows, 3, shuffle=False, texts_per_image=4)
    (batch,) = list(sampler)
    per_image = np.bincount(rows[batch].numpy())
    assert per_image.tolist() == [4, 3, 4]  # image 1 has only 3
    assert len(set(batch.tolist())) == len(batch)
    assert np.all(np.diff(batch) > 0)  # each image's texts keep their split order


def test_texts_per_image_draws_again_each_epoch_and_replays_on_resume():
    rows = torch.arange(40).repeat_interleave(10)  # 40 images x 10 texts
    sampler = ImageMajorBatches(rows, 4, shuffle=True, seed=3, texts_per_image=2)
    seen = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sum(len(b) for b in batches) == 80  # every image, 2 texts each
        seen |= set(np.concatenate(batches).tolist())
        sampler.set_epoch(epoch, start_batch=3)  # a resumed epoch replays the same draws
        assert all(np.array_equal(a, b) for a, b in zip(list(sampler), batches[3:], strict=True))
    assert len(seen) > 250  # different texts each epoch: 1 - 0.8^6 = 74% of the 400 expected
    fresh = ImageMajorBatches(rows, 4, shuffle=True, seed=3, texts_per_image=2)
    fresh.set_epoch(5)
    assert all(np.array_equal(a, b) for a, b in zip(fresh, batches, strict=True))


def test_texts_per_image_must_not_be_negative():
    with pytest.raises(ValueError, match="texts_per_image"):
        ImageMajorBatches(torch.arange(4), 2, shuffle=False, texts_per_image=-1)
