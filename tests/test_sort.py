"""The external sort of the per-chunk rows (`files.ExternalSort`): the same sorted lines,
whether they stayed in memory, spilled into a few runs merged at once, or into many runs
merged a few at a time."""

from __future__ import annotations

import io
import random

import pytest

from virnucpro.files import ExternalSort


@pytest.mark.parametrize("run_chars, runs", [(100_000, range(0, 1)), (10_000, range(2, 4)),
                                             (100, range(4, 1000))],
                         ids=["memory", "one-merge", "levels"])
def test_external_sort_gives_sorted_lines_and_leaves_no_run(tmp_path, run_chars, runs):
    rng = random.Random(run_chars)
    # Ids may hold characters that other line splitters end lines at (\r, \x1c, \x85,
    # \u2028): lines end at "\n" only, in memory and in the runs on disk.
    odd = ["", "\r", "\x1c", "\x85", "\u2028"]
    lines = [f"r{rng.randrange(10**6)}{rng.choice(odd)}_chunk_{rng.randrange(9)}\t"
             f"{rng.random() < 0.5}\n" for _ in range(1000)]
    sort = ExternalSort(tmp_path, "t", run_chars=run_chars, fan_in=3)
    for k in range(0, len(lines), 37):  # a unit's rows at a time
        sort.add("".join(lines[k:k + 37]))
    # The runs: those spilled so far, and the rest spilled by write_sorted if any were; more
    # than fan_in are merged in levels.
    spilled = len(list(tmp_path.iterdir()))
    assert (spilled + 1 if spilled else 0) in runs
    out = io.StringIO(newline="\n")
    sort.write_sorted(out)
    assert out.getvalue() == "".join(sorted(lines))
    assert not list(tmp_path.iterdir())
