"""regions.py: exact regions on hand-made chunk score tracks, the Viterbi path against a
brute-force search, the formatting helpers and the rebuild from a chunks.tsv."""

from __future__ import annotations

import itertools
import math
import random
import re

import numpy as np
import pytest
from conftest import write_predict_output

from virnucpro.errors import InputError
from virnucpro.frames import chunk_bounds
from virnucpro.regions import (
    REGION_COLUMNS,
    SCORE_CLIP,
    Region,
    RegionParams,
    find_regions,
    region_fasta,
    region_rows,
    regions_from_chunks_tsv,
    viterbi,
)

V, H, N = 0.99, 0.01, None  # a confident virus chunk, a confident host chunk, a no_call
SIZE = 300
ANY_LENGTH = RegionParams(min_region_length=0)


def track(scores: list[float | None], threshold: float = 0.5,
          params: RegionParams = ANY_LENGTH) -> list[tuple[int, int, int, str]]:
    """(start, end, n_chunks, kind) of the regions of a sequence of abutting 300 bp chunks."""
    starts = [SIZE * k for k in range(len(scores))]
    regions = find_regions("s", SIZE * len(scores), starts, [s + SIZE for s in starts], scores,
                           threshold, params)
    assert [r.region_id for r in regions] == [f"region_{k}" for k in range(1, len(regions) + 1)]
    return [(r.start, r.end, r.n_chunks, r.kind) for r in regions]


# ------------------------------------------------------------------ score tracks
def test_an_insert_in_the_middle():
    assert track([H] * 4 + [V] * 4 + [H] * 4) == [(1200, 2400, 4, "partial")]


def test_an_insert_at_either_edge():
    assert track([V] * 4 + [H] * 8) == [(0, 1200, 4, "partial")]
    assert track([H] * 8 + [V] * 3) == [(2400, 3300, 3, "partial")]


def test_two_inserts_and_a_short_gap_that_is_bridged():
    assert track([H] * 4 + [V] * 4 + [H] * 4 + [V] * 4 + [H] * 4) == [
        (1200, 2400, 4, "partial"), (3600, 4800, 4, "partial")]
    # One host chunk between inserts costs less than leaving and re-entering the virus state.
    assert track([H] * 4 + [V] * 4 + [H] + [V] * 4 + [H] * 4) == [(1200, 3900, 9, "partial")]


def test_all_virus_is_whole_and_all_host_is_nothing():
    assert track([V] * 6) == [(0, 1800, 6, "whole")]
    assert track([0.6, 0.7, 0.55]) == [(0, 900, 3, "whole")]
    assert track([H] * 6) == []
    assert track([0.4, 0.3, 0.45]) == []


def test_isolated_chunks_are_smoothed_away():
    assert track([H] * 5 + [V] + [H] * 5) == []
    assert track([H] * 5 + [V, V] + [H] * 5) == []  # two switches cost more than two chunks
    assert track([V] * 5 + [H] + [V] * 5) == [(0, 3300, 11, "whole")]


def test_a_host_chunk_at_a_sequence_end_is_trimmed_off():
    # One host chunk does not repay a switch, so the path keeps it; the region does not.
    assert track([H] * 6 + [V] * 6 + [H]) == [(1800, 3600, 6, "partial")]
    assert track([0.3] + [V] * 6 + [H] * 6) == [(300, 2100, 6, "partial")]
    assert track([H, N] + [V] * 6) == [(600, 2400, 6, "partial")]
    # So are no_call chunks there, which cost the path nothing to keep (issue 21).
    assert track([V] * 6 + [N, N]) == [(0, 1800, 6, "partial")]


def test_switch_prob_sets_how_much_evidence_a_region_needs():
    weak = [0.1] * 6 + [0.9] * 4 + [0.1] * 6  # 4 x logit(0.9) = 8.8 nats < two switches
    assert track(weak) == []
    assert track(weak, params=RegionParams(min_region_length=0, switch_prob=0.05)) == [
        (1800, 3000, 4, "partial")]


def test_no_call_chunks():
    # Inside a region they are bridged; the score is the mean of the scored chunks.
    regions = find_regions("s", 4200, range(0, 4200, 300), range(300, 4500, 300),
                           [H] * 4 + [V, V, N, N, V, V] + [H] * 4, 0.5, ANY_LENGTH)
    assert [(r.start, r.end, r.n_chunks, r.score) for r in regions] == [(1200, 3000, 6, V)]
    # Between a region and host, or a sequence end, they stay outside the region: it starts
    # and ends on chunks called virus, and claims no sequence that was not scored.
    assert track([H] * 4 + [N, N] + [V] * 4 + [N] + [H] * 4) == [(1800, 3000, 4, "partial")]
    assert track([N, N] + [V] * 4 + [H] * 4) == [(600, 1800, 4, "partial")]
    assert track([N, V, V, V, N]) == [(300, 1200, 3, "partial")]
    assert track([N] * 5) == []
    assert track([N, H, N]) == []
    assert track([N, 0.7]) == [(300, 600, 1, "partial")]
    assert track([0.7, N]) == [(0, 300, 1, "partial")]
    assert track([V, N, V]) == [(0, 900, 3, "whole")]
    # NaN is a no_call too. The region of one scored chunk in two is partial, so at the
    # default --min-region-length such a read has none (its sequence call still says virus).
    assert find_regions("s", 600, [0, 300], [300, 600], [math.nan, 0.7], 0.5,
                        ANY_LENGTH)[0].score == 0.7
    assert find_regions("s", 600, [0, 300], [300, 600], [math.nan, 0.7], 0.5) == []


def test_a_region_ends_on_its_last_virus_chunk_not_at_the_end_of_unscored_sequence():
    """Issue 21: a 300 kb record, an ORF island at 120,000-150,000 and random DNA around it
    (500 bp chunks; outside the island a few chunks have frames, scored as host, and after it
    none has): at threshold 0.2 the region ran on to 300,000 through 300 no_call chunks."""
    bounds = chunk_bounds(300_000, 500)
    rng = random.Random(21)
    scores: list[float | None] = [
        rng.uniform(0.6, 0.9) if 120_000 <= start < 150_000
        else (rng.uniform(0.02, 0.1) if start < 120_000 and k % 40 == 0 else None)
        for k, (start, _) in enumerate(bounds)]
    assert scores[239] is None and scores[240] is not None and scores[299] is not None
    assert all(s is None for s in scores[300:])  # chunks 301-600: no frames
    regions = find_regions("contig", 300_000, [b[0] for b in bounds], [b[1] for b in bounds],
                           scores, 0.2)
    assert [(r.start, r.end, r.n_chunks, r.kind) for r in regions] == [
        (120_000, 150_000, 60, "partial")]
    assert regions[0].score == pytest.approx(np.mean(scores[240:300]))


def test_sequences_of_one_chunk_keep_their_own_call():
    def one(score, threshold=0.5):
        return find_regions("r", 150, [0], [150], [score], threshold, RegionParams())

    assert one(0.8) == [Region("r", "region_1", 0, 150, 1, 0.8, "whole")]
    assert one(0.5) == [Region("r", "region_1", 0, 150, 1, 0.5, "whole")]  # >= threshold
    assert one(0.8, threshold=0.9) == [] and one(0.2) == [] and one(None) == []
    assert find_regions("r", 0, [], [], [], 0.5) == []
    assert one(0.9)[0].length == 150  # whole regions ignore min_region_length


def test_boundaries_of_overlapping_chunks_are_midpoints():
    bounds = chunk_bounds(2000, 300)  # the original's overlaps: 7 chunks for 2000 bp
    assert bounds == [(0, 300), (285, 585), (570, 870), (855, 1155), (1140, 1440),
                      (1425, 1725), (1710, 2000)]
    starts, ends = zip(*bounds, strict=True)
    regions = find_regions("s", 2000, starts, ends, [H] * 3 + [V] * 4, 0.5, ANY_LENGTH)
    assert [(r.start, r.end, r.kind) for r in regions] == [((870 + 855) // 2, 2000, "partial")]
    regions = find_regions("s", 2000, starts, ends, [V] * 4 + [H] * 3, 0.5, ANY_LENGTH)
    assert [(r.start, r.end) for r in regions] == [(0, (1155 + 1140) // 2)]
    # Chunks given out of order are sorted by start first.
    regions = find_regions("s", 2000, starts[::-1], ends[::-1], [V] * 4 + [H] * 3, 0.5,
                           ANY_LENGTH)
    assert [(r.start, r.end) for r in regions] == [(862, 2000)]
    regions = find_regions("s", 2000, starts, ends, [V] * 7, 0.5, ANY_LENGTH)
    assert [(r.start, r.end, r.kind) for r in regions] == [(0, 2000, "whole")]


def test_min_region_length_filters_partial_regions_only():
    insert = [H] * 4 + [V] * 4 + [H] * 4  # a 1200 bp region
    assert track(insert, params=RegionParams(min_region_length=1200)) == [
        (1200, 2400, 4, "partial")]
    assert track(insert, params=RegionParams(min_region_length=1201)) == []
    assert track([V] * 3, params=RegionParams(min_region_length=5000)) == [(0, 900, 3, "whole")]
    assert RegionParams() == RegionParams(min_region_length=1000, switch_prob=1e-3)


def test_threshold_moves_regions_and_filters_weak_ones():
    scores = [0.2] * 5 + [0.8] * 12 + [0.2] * 5  # 12 x logit(0.8) = 16.6 nats
    assert track(scores, threshold=0.5) == [(1500, 5100, 12, "partial")]
    assert track(scores, threshold=0.85) == []
    # Each 0.99 chunk outvotes three 0.3 chunks, but the mean score is below 0.5: a whole region
    # has the sequence's own score, and is kept only where the sequence is called virus.
    from virnucpro.regions import _emissions

    scores = [0.99, 0.3, 0.3, 0.3] * 5 + [0.99]  # mean 0.497
    assert viterbi(_emissions(np.array(scores), 0.5), 1e-3).all()
    assert track(scores) == []
    assert track([0.99, 0.35, 0.35, 0.35] * 5 + [0.99]) == [(0, 6300, 21, "whole")]  # 0.53
    assert track([0.6] * 6, threshold=0.0) == [(0, 1800, 6, "whole")]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2 chunk starts, 1 ends and 2 scores"):
        find_regions("s", 600, [0, 300], [300], [V, V], 0.5)
    with pytest.raises(ValueError, match=r"chunk 1: bad coordinates \[300, 300\)"):
        find_regions("s", 600, [0, 300], [300, 300], [V, V], 0.5)
    with pytest.raises(ValueError, match="s: a chunk ends at 600, past its length 500"):
        find_regions("s", 500, [0, 300], [300, 600], [V, V], 0.5)
    with pytest.raises(ValueError, match="switch_prob must be in"):
        RegionParams(switch_prob=0.5)
    with pytest.raises(ValueError, match="min_region_length must be >= 0, got -1"):
        RegionParams(min_region_length=-1)


# ------------------------------------------------------------------ Viterbi
def _best_path(scores: list[float], threshold: float, p: float) -> tuple[bool, ...]:
    """Every state path scored in full: the reference for `viterbi`."""
    def clip(x):
        return min(max(x, SCORE_CLIP), 1 - SCORE_CLIP)

    t = clip(threshold)
    best, best_path = -math.inf, ()
    for path in itertools.product((False, True), repeat=len(scores)):
        total = sum(math.log(clip(s) / t) if v else math.log((1 - clip(s)) / (1 - t))
                    for s, v in zip(scores, path, strict=True))
        total += sum(math.log(p) if a != b else math.log(1 - p)
                     for a, b in itertools.pairwise(path))
        if total > best:
            best, best_path = total, path
    return best_path


def test_viterbi_is_the_best_path():
    from virnucpro.regions import _emissions

    rng = random.Random(3)
    for _ in range(150):
        n = rng.randint(1, 10)
        scores = [rng.random() for _ in range(n)]
        threshold, p = rng.choice([0.3, 0.5, 0.8]), rng.choice([1e-3, 0.05, 0.3])
        states = viterbi(_emissions(np.array(scores), threshold), p)
        assert tuple(states.tolist()) == _best_path(scores, threshold, p), (scores, threshold, p)
    assert viterbi(np.zeros((0, 2)), 1e-3).tolist() == []


# ------------------------------------------------------------------ formatting and files
REGIONS = [Region("c1", "region_1", 1200, 2400, 4, 0.91234567, "partial"),
           Region("c1", "region_2", 3600, 3700, 1, 0.75, "partial"),
           Region("r2", "region_1", 0, 150, 1, 1 / 3, "whole")]


def test_region_rows():
    assert REGION_COLUMNS == ("seq_id", "region_id", "start", "end", "length", "n_chunks",
                              "score", "kind")
    assert region_rows(REGIONS) == [
        "c1\tregion_1\t1200\t2400\t1200\t4\t0.91234565\tpartial\n",
        "c1\tregion_2\t3600\t3700\t100\t1\t0.75\tpartial\n",
        "r2\tregion_1\t0\t150\t150\t1\t0.33333334\twhole\n"]
    assert region_rows([]) == []


def test_region_fasta():
    seq = "".join(random.Random(0).choice("ACGT") for _ in range(3700))
    text = region_fasta(seq, REGIONS[0])
    lines = text.splitlines()
    assert lines[0] == ">c1|region_1|1200-2400"
    assert [len(x) for x in lines[1:]] == [60] * 20 and "".join(lines[1:]) == seq[1200:2400]
    assert region_fasta(seq, REGIONS[1]) == (f">c1|region_2|3600-3700\n{seq[3600:3660]}\n"
                                             f"{seq[3660:3700]}\n")
    with pytest.raises(ValueError, match=re.escape(
            "c1|region_1 ends at 2400, past the sequence's 100 bases")):
        region_fasta(seq[:100], REGIONS[0])


def test_regions_from_a_predict_outputs_chunks_tsv(tmp_path):
    out = write_predict_output(tmp_path / "pred")  # the hand-made output in conftest
    regions = regions_from_chunks_tsv(out / "chunks.tsv", 0.5, ANY_LENGTH)
    # v1: chunks 0.75 and 0.3, both virus on the best path, the 0.3 at the end trimmed off;
    # o2, x1: one chunk each >= 0.5; o1: 0.4 and a no_call; o3: a no_call only.
    assert [(r.seq_id, r.start, r.end, r.n_chunks, r.score, r.kind) for r in regions] == [
        ("v1", 0, 500, 1, 0.75, "partial"), ("o2", 0, 300, 1, 0.55, "whole"),
        ("x1", 0, 300, 1, 0.8, "whole")]
    assert [r.seq_id for r in regions_from_chunks_tsv(out / "chunks.tsv", 0.5)] == ["o2", "x1"]
    assert [r.seq_id for r in regions_from_chunks_tsv(out / "chunks.tsv", 0.6)] == ["x1"]


def test_regions_from_chunks_tsv_matches_find_regions(tmp_path):
    rng = random.Random(5)
    rows, expected = [], []
    for i, length in enumerate([5000, 800, 301, 12000, 5000]):
        sid = "dup" if i in (0, 4) else f"c{i}"  # a repeated id stays two records
        bounds = chunk_bounds(length, SIZE)
        scores = [rng.choice([H, V, 0.3, 0.8, None]) for _ in bounds]
        scores[len(bounds) // 3: len(bounds) // 2] = [V] * len(scores[len(bounds) // 3:
                                                                     len(bounds) // 2])
        for k, ((s, e), x) in enumerate(zip(bounds, scores, strict=True), 1):
            rows.append(f"{sid}_chunk_{k}\t{sid}\t{s}\t{e}\t1\t{'' if x is None else x}\tx\n")
        starts, ends = zip(*bounds, strict=True)
        expected += find_regions(sid, length, starts, ends, scores, 0.5, ANY_LENGTH)
    path = tmp_path / "chunks.tsv"
    path.write_text("chunk_id\tseq_id\tstart\tend\tn_frames\tscore\tcall\n" + "".join(rows))
    assert regions_from_chunks_tsv(path, 0.5, ANY_LENGTH) == expected
    assert len(expected) >= 4 and sum(r.seq_id == "dup" for r in expected) >= 2

    path.write_text("seq_id\tscore\n")
    with pytest.raises(InputError, match=r"not a chunks\.tsv"):
        regions_from_chunks_tsv(path, 0.5)
    path.write_text("chunk_id\tseq_id\tstart\tend\tn_frames\tscore\tcall\nx\ty\tz\n")
    with pytest.raises(InputError, match=r"line 2: not a chunks\.tsv row"):
        regions_from_chunks_tsv(path, 0.5)
