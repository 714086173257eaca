"""Which training images an epoch visits, and how often.

By default every image once per epoch, shuffled, sharded across ranks by torch's
DistributedSampler. With a repeat threshold t, repeat-factor sampling (Gupta, Dollar and
Girshick, LVIS, CVPR 2019) gives a class seen in a fraction f_c < t of the training images the
factor sqrt(t / f_c), and an image the largest factor of the classes it holds. The challenge
scores each image by the mean F1 of its own classes, so an image with a necklace loses a
whole 1/k of its score when necklaces are missed; those images are the ones drawn more.
"""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler


def class_presence(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N x C bool: which classes each uint8 mask holds."""
    return torch.stack([torch.bincount(m.flatten().long(), minlength=num_classes)[:num_classes] > 0
                        for m in masks])


def repeat_factors(presence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each image's expected draws per epoch before normalising: at least 1."""
    image_fraction = presence.float().mean(0)  # f_c
    class_factor = (threshold / image_fraction.clamp(min=1e-12)).sqrt().clamp(min=1.0)
    return (class_factor * presence).amax(1).clamp(min=1.0)


class RepeatFactorSampler(DistributedSampler):
    """An epoch of N draws in which image i is repeated about factor_i times: the list of
    stochastically rounded repeats, shuffled and cut to N. The epoch keeps its length, so a
    fixed-epoch schedule (warm-up, resolution phases) means what it did; common images are
    seen a little less often instead. Sharded like the parent: same seed and epoch on every
    rank, every world-th index."""

    def __init__(self, factors: torch.Tensor, num_replicas: int, rank: int, seed: int):
        super().__init__(range(len(factors)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.factors = factors

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        whole = self.factors.floor()
        repeats = whole + (torch.rand(len(self.factors), generator=g) < self.factors - whole)
        drawn = torch.repeat_interleave(torch.arange(len(self.factors)), repeats.long())
        indices = drawn[torch.randperm(len(drawn), generator=g)][:len(self.factors)].tolist()
        indices += indices[:self.total_size - len(indices)]
        return iter(indices[self.rank:self.total_size:self.num_replicas])


def epoch_sampler(masks: torch.Tensor, num_classes: int, threshold: float, world: int, rank: int,
                  seed: int) -> DistributedSampler:
    """Uniform shuffling when threshold is 0, repeat-factor sampling on these masks otherwise."""
    if threshold <= 0:
        return DistributedSampler(range(len(masks)), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return RepeatFactorSampler(repeat_factors(class_presence(masks, num_classes), threshold), world, rank, seed)
