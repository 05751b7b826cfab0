"""The external sort of the per-chunk rows (`files.ExternalSort`): the same sorted lines,
whether they stayed in memory, spilled into a few runs read back at once, or into many runs
merged line by line."""

from __future__ import annotations

import io
import random

import pytest

from virnucpro.files import ExternalSort


@pytest.mark.parametrize("run_lines", [10_000, 300, 7], ids=["memory", "read-back", "merged"])
def test_external_sort_gives_sorted_lines_and_leaves_no_run(tmp_path, run_lines):
    rng = random.Random(run_lines)
    lines = [f"r{rng.randrange(10**6)}_chunk_{rng.randrange(9)}\t{rng.random() < 0.5}\n"
             for _ in range(1000)]
    sort = ExternalSort(tmp_path, "t", run_lines=run_lines, fan_in=3)
    for k in range(0, len(lines), 37):  # a unit's rows at a time
        sort.add(lines[k:k + 37])
    out = io.StringIO()
    sort.write_sorted(out)
    assert out.getvalue() == "".join(sorted(lines))
    assert not list(tmp_path.iterdir())
