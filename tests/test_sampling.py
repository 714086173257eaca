"""Repeat-factor sampling: rare-class images drawn more, epochs keep their length, ranks agree."""

import json

import pytest
import torch

import facekd.engine as engine
from facekd.config import RunConfig, apply_overrides
from facekd.sampling import RepeatFactorSampler, class_presence, epoch_sampler, repeat_factors
from teachers.train import train_teacher


def masks_with_rare_class(n: int = 100, rare_every: int = 10) -> torch.Tensor:
    masks = torch.zeros(n, 8, 8, dtype=torch.uint8)
    masks[:, :4] = 1                 # class 1 in every image
    masks[::rare_every, 0, 0] = 15   # class 15 (earrings) in one image of rare_every
    return masks


def test_repeat_factors_follow_the_class_frequencies():
    presence = class_presence(masks_with_rare_class(), num_classes=19)
    assert presence[:, 1].all() and presence[:, 15].sum() == 10 and not presence[:, 2].any()
    factors = repeat_factors(presence, threshold=0.4)
    # class 15 is in 10% of the images: sqrt(0.4 / 0.1) = 2; the others keep 1
    assert torch.allclose(factors[::10], torch.tensor(2.0))
    assert torch.all(factors[1::10] == 1.0)


def test_rare_images_are_drawn_more_and_the_epoch_keeps_its_length():
    masks = masks_with_rare_class()
    sampler = epoch_sampler(masks, 19, threshold=0.4, world=1, rank=0, seed=0)
    assert isinstance(sampler, RepeatFactorSampler)
    rare = set(range(0, 100, 10))
    draws = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == 100
        draws += order
    rare_share = sum(i in rare for i in draws) / len(draws)
    # 10 images of factor 2 among 90 of factor 1: 20 / 110 of the draws, against 10% uniformly
    assert 0.15 < rare_share < 0.22
    sampler.set_epoch(3)
    assert list(sampler) == list(sampler)  # one epoch's order is a function of seed and epoch


def test_ranks_share_one_weighted_order():
    masks = masks_with_rare_class(n=101)
    shards = []
    for rank in range(2):
        sampler = epoch_sampler(masks, 19, threshold=0.4, world=2, rank=rank, seed=7)
        sampler.set_epoch(5)
        shards.append(list(sampler))
    whole = epoch_sampler(masks, 19, threshold=0.4, world=1, rank=0, seed=7)
    whole.set_epoch(5)
    assert len(shards[0]) == len(shards[1]) == 51
    interleaved = [i for pair in zip(*shards) for i in pair]
    assert interleaved[:101] == list(whole)


def test_a_threshold_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="repeat_threshold must be in"):
        RunConfig(repeat_threshold=1.5)


def test_threshold_zero_is_the_plain_shuffle():
    masks = masks_with_rare_class()
    sampler = epoch_sampler(masks, 19, threshold=0.0, world=1, rank=0, seed=0)
    sampler.set_epoch(2)
    assert sorted(sampler) == list(range(100))


def test_the_engine_trains_on_the_weighted_order(tmp_path, sample_root, monkeypatch):
    orders = []
    real = engine.train_one_epoch

    def recording(parts, counters, ctx, split, order, *args):
        orders.append(order.tolist())
        return real(parts, counters, ctx, split, order, *args)

    monkeypatch.setattr(engine, "train_one_epoch", recording)
    cfg = apply_overrides(RunConfig(), dict(model="teacher_tiny", resolutions=[[64, 1]], batch_size=8,
                                            repeat_threshold=1.0, dice_weight=0.5, dice_scope="image"))
    train_teacher(cfg, sample_root, tmp_path / "run", show_progress=False)
    (order,) = orders
    n_train = len(list((sample_root / "train" / "masks").glob("*.png")))
    assert len(order) == n_train and len(set(order)) < n_train  # some images twice, some not at all
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["repeat_threshold"], saved["dice_scope"]) == (1.0, "image")
