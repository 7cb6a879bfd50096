"""The order utterances are trained in."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


class LengthBucketedOrder(DistributedSampler):
    """A shuffled order of utterances in which each run of ``batch_size`` has similar lengths,
    so that padded batches hold little padding; under DDP, this process's share of it.

    Each epoch: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by
    length, cut it into batches, shuffle the batches. Drawn from a generator of its own,
    seeded with ``seed`` plus the epoch (:meth:`set_epoch`, which Lightning calls at the
    start of every epoch), as torch's ``DistributedSampler`` draws its shuffle: every
    process draws the same order whatever else drew random numbers there (dropout and
    input masks draw per process), and a run resumed at an epoch draws that epoch's order
    again. ``seed`` defaults to the run's ``seed_everything`` (Lightning's ``PL_GLOBAL_SEED``,
    which its own distributed samplers take too).

    Under DDP (a process group initialised; or ``num_replicas`` and ``rank`` given) the
    order is padded with its own first utterances to a multiple of ``num_replicas x
    batch_size``, cut into batches and dealt out whole, batch ``i`` to process ``i mod
    num_replicas``: each process's batches keep their similar lengths, and every process
    has as many. Being a ``DistributedSampler``, Lightning uses it as it is instead of
    wrapping it (its wrapper would shuffle the order again and undo the buckets).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, pool_batches: int = 50, seed: Optional[int] = None,
                 num_replicas: Optional[int] = None, rank: Optional[int] = None):
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else dist.get_world_size() if distributed else 1
        rank = rank if rank is not None else dist.get_rank() if distributed else 0
        seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        super().__init__(range(len(lengths)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.pool = batch_size, batch_size * pool_batches
        if num_replicas > 1:
            share = num_replicas * batch_size
            self.total_size = -(-len(self.lengths) // share) * share
        else:
            self.total_size = len(self.lengths)  # one process: no padding, a short last batch
        self.num_samples = self.total_size // num_replicas

    def epoch_order(self) -> torch.Tensor:
        """This epoch's whole order, every process's share, before padding."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        pools = [pool[self.lengths[pool].argsort(stable=True)] for pool in order.split(self.pool)]
        batches = torch.cat(pools).split(self.batch_size)
        return torch.cat([batches[i] for i in torch.randperm(len(batches), generator=generator)])

    def __iter__(self):
        if not len(self.lengths):
            return iter([])
        order = self.epoch_order()
        if self.total_size > len(order):
            order = order.repeat(-(-self.total_size // len(order)))[: self.total_size]
        batches = order.split(self.batch_size)
        return iter(torch.cat(batches[self.rank :: self.num_replicas]).tolist())

    def __len__(self) -> int:
        return self.num_samples
