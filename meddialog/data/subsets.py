"""Seeded subsets: the ways the pipeline picks part of a list, each for a reason.

`seeded_subset` keeps the chosen items in their original order (a source's records, the GRPO
subset): the files it feeds stay in source order, so a diff of two runs shows what was added or
dropped. `seeded_prefix` shuffles and cuts (the evaluated test dialogues): a smaller count is a
prefix of a larger one's selection, so an eval of 8 dialogues scores the first 8 of an eval of 32.
`seeded_sample` is SFT's (`sft.max_samples`, `sft.eval_samples`): a sample in random order. SFT's
run key and its validation batches depend on that order, so moving it to `seeded_subset` would
change the default run's numbers; it stays as it was.
"""
from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def seeded_indices(total: int, size: int, seed: int) -> list[int]:
    """`size` of the indices 0..total-1 chosen with `seed`, ascending; 0 or more than `total` = all."""
    if size <= 0 or size >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), size))


def seeded_subset(items: list[T], size: int, seed: int) -> list[T]:
    """`size` items chosen with `seed`, in their original order; 0 or more than there are = all."""
    return [items[i] for i in seeded_indices(len(items), size, seed)]


def seeded_prefix(items: list[T], size: int, seed: int) -> list[T]:
    """The first `size` items of a seeded shuffle: a smaller `size` gives a prefix of a larger one's."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:size]


def seeded_sample(items: list[T], size: int, seed: int) -> list[T]:
    """`size` items (all, if fewer) chosen with `seed`, in the sample's random order."""
    return random.Random(seed).sample(items, min(size, len(items)))
