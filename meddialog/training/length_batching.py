"""SFT batches of similar length, without reordering training by length.

A batch is padded to its longest example and the padding is computed like real tokens, so with
random batches of 4 at sft.max_length 256, about a third of the SFT compute here goes to padding. Sorting the
whole dataset by length removes it (transformers' `group_by_length`), but then a run shorter than
an epoch (the CPU default trains 24 steps) sees only the longest examples, and quality drops.

This sampler sorts only within windows: it shuffles the dataset (seeded), cuts the order into
windows of `window_batches` batches, sorts each window by length, cuts it into batches and shuffles
those batches within the window. Training therefore sees the same examples, window by window, as
with random batches, while each batch holds examples of similar length (the padding measured
with and without it: docs/performance.md, 'SFT: batches of similar length').
"""
from __future__ import annotations

import random
from typing import Iterator

from torch.utils.data import Sampler


class LengthWindowSampler(Sampler[int]):
    """Indices in an order whose consecutive runs of `batch_size` are of similar length.

    `batch_size` is the per-process batch the DataLoader cuts the order into; under DDP, accelerate
    deals those batches out to the processes in turn, so each process's batches stay homogeneous.
    The order depends on `seed` and the epoch (`set_epoch`, called by the Trainer each epoch), so a
    resumed run skips exactly the batches it had already trained on.
    """

    def __init__(self, lengths: list[int], batch_size: int, window_batches: int, seed: int):
        if batch_size < 1 or window_batches < 1:
            raise ValueError(f"batch_size and window_batches must be >= 1, got {batch_size}, {window_batches}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.window = batch_size * window_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        for start in range(0, len(order), self.window):
            # longest first, ties in shuffled order; the window's batches are then shuffled
            window = sorted(order[start:start + self.window], key=lambda i: -self.lengths[i])
            batches = [window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size)]
            full = [b for b in batches if len(b) == self.batch_size]
            rng.shuffle(full)
            # a short batch (the dataset's last window) stays last, so the DataLoader's batch
            # boundaries keep matching the sampler's
            for batch in full + [b for b in batches if len(b) < self.batch_size]:
                yield from batch
