"""Work units and token-budget batches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from virnucpro.runtime.batching import token_batches


@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 2000))
def test_token_batches_cover_everything_within_budget(lengths, budget):
    batches = token_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= budget
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_token_batches_example():
    # 10 + 9 fit (2 x 10 <= 20); 9 + 8 + 3 would be 3 x 9 = 27 > 20.
    assert token_batches([3, 10, 9, 8], 20) == [[1, 2], [3, 0]]
    assert token_batches([50, 5], 20) == [[0], [1]]
