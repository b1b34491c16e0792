"""The two seeded selections: a subset kept in order, and a shuffled prefix."""
import random

from meddialog.data.subsets import (
    seeded_indices,
    seeded_prefix,
    seeded_sample,
    seeded_subset,
)


def test_subset_keeps_the_original_order_and_is_the_same_choice_as_its_indices():
    items = [f"r{i}" for i in range(50)]
    chosen = seeded_subset(items, 7, seed=5)
    assert chosen == [items[i] for i in seeded_indices(50, 7, 5)]
    assert chosen == sorted(chosen, key=items.index) and len(set(chosen)) == 7
    assert seeded_subset(items, 7, seed=6) != chosen
    assert seeded_subset(items, 0, seed=5) == items == seeded_subset(items, 80, seed=5)


def test_prefix_of_a_smaller_count_is_a_prefix_of_a_larger_one():
    items = list(range(40))
    small, large = seeded_prefix(items, 8, seed=3), seeded_prefix(items, 32, seed=3)
    assert large[:8] == small and len(set(large)) == 32
    assert small != items[:8]  # shuffled, not the head of the list
    assert seeded_prefix(items, 8, seed=4) != small


def test_sample_is_the_random_order_sft_has_always_used():
    items = list(range(30))
    assert seeded_sample(items, 5, seed=42) == random.Random(42).sample(items, 5)
    assert sorted(seeded_sample(items, 99, seed=1)) == items
