"""The order utterances are trained in."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


class LengthBucketedOrder(Sampler[int]):
    """A shuffled order of utterances in which each run of ``batch_size`` has similar lengths,
    so that padded batches hold little padding.

    Each epoch: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by
    length, cut it into batches, shuffle the batches. Drawn from torch's global generator,
    like the DataLoader's own shuffling, so ``seed_everything`` and resuming cover it. Under
    DDP Lightning deals the order out to the processes row by row, and neighbours in it
    have similar lengths, so each process's batches do too.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, pool_batches: int = 50):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.pool = batch_size, batch_size * pool_batches

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths))
        pools = [pool[self.lengths[pool].argsort(stable=True)] for pool in order.split(self.pool)]
        batches = torch.cat(pools).split(self.batch_size)
        return iter(torch.cat([batches[i] for i in torch.randperm(len(batches))]).tolist())
