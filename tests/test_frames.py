"""Chunking and six-frame translation against SPEC §2–3 and slow, obviously-correct references."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virnucpro.frames import (
    SKIP_EMPTY,
    SKIP_NO_FRAME,
    Chunk,
    Frame,
    Skip,
    chunk_bounds,
    chunk_edges,
    chunk_record,
    iter_record_frames,
    translate_six_frames,
)
from virnucpro.reader import Record

# The original's codon table, spelled out.
CODON_TABLE = {
    "TCA": "S", "TCC": "S", "TCG": "S", "TCT": "S", "TTC": "F", "TTT": "F", "TTA": "L", "TTG": "L",
    "TAC": "Y", "TAT": "Y", "TAA": "*", "TAG": "*", "TGC": "C", "TGT": "C", "TGA": "*", "TGG": "W",
    "CTA": "L", "CTC": "L", "CTG": "L", "CTT": "L", "CCA": "P", "CCC": "P", "CCG": "P", "CCT": "P",
    "CAC": "H", "CAT": "H", "CAA": "Q", "CAG": "Q", "CGA": "R", "CGC": "R", "CGG": "R", "CGT": "R",
    "ATA": "I", "ATC": "I", "ATT": "I", "ATG": "M", "ACA": "T", "ACC": "T", "ACG": "T", "ACT": "T",
    "AAC": "N", "AAT": "N", "AAA": "K", "AAG": "K", "AGC": "S", "AGT": "S", "AGA": "R", "AGG": "R",
    "GTA": "V", "GTC": "V", "GTG": "V", "GTT": "V", "GCA": "A", "GCC": "A", "GCG": "A", "GCT": "A",
    "GAC": "D", "GAT": "D", "GAA": "E", "GAG": "E", "GGA": "G", "GGC": "G", "GGG": "G", "GGT": "G",
}
SENSE = sorted(c for c, a in CODON_TABLE.items() if a != "*")


# ---------------------------------------------------------------- slow references
def ref_chunks(seq: str, size: int) -> list[str]:
    """The original's split_fasta_chunk, step by step (float division and all)."""
    length = len(seq)
    num_chunks = -(-length // size)
    repeat_length = num_chunks * size - length
    lower = int(repeat_length / num_chunks)
    upper = lower + 1
    need = repeat_length - sum([lower] * (num_chunks - 1))
    shifts = [upper] * need + [lower] * (num_chunks - 1 - need) + [0]
    chunks, move = [], 0
    # zip() stops at the shorter list: the original relies on it when need > n - 1.
    for a, b in zip(range(0, length, size), shifts, strict=False):
        chunks.append(seq[a - move: a - move + size] if a > 1 else seq[a: a + size])
        move += b
    return chunks


def ref_frames(chunk: str) -> list[tuple[str, str, str]]:
    """Per-codon dictionary translation and the original's frame selection."""
    seq = chunk.upper()
    complement = {"A": "T", "C": "G", "G": "C", "T": "A"}
    rc = ""
    for base in reversed(seq):
        rc += complement.get(base, base)
    kept = []
    for letter, strand in (("F", seq), ("R", rc)):
        for f in (1, 2, 3):
            protein = ""
            i = f - 1
            while i + 3 <= len(strand):
                protein += CODON_TABLE.get(strand[i: i + 3], "")
                i += 3
            if protein and "*" not in protein:
                kept.append((f"{letter}{f}", strand[f - 1: f + 3 * len(protein)], protein))
    return kept


def rec(rid: str, seq: str) -> Record:
    return Record(rid, rid, seq, "test")


# ------------------------------------------------------------------------- chunking
@pytest.mark.parametrize(("length", "expected"), [
    (501, [(0, 500), (250, 501)]),
    (1200, [(0, 500), (399, 899), (798, 1200)]),
    (1500, [(0, 500), (500, 1000), (1000, 1500)]),
    (500, [(0, 500)]),
    (499, [(0, 499)]),
    (1, [(0, 1)]),
    (0, []),
    (999, [(0, 500), (499, 999)]),
])
def test_chunk_bounds_spec_examples(length, expected):
    assert chunk_bounds(length, 500) == expected


def test_chunk_bounds_1001_cut_short():
    # n=3, r=499, lo=166, need=167: shifts 167, 167 -> starts 0, 333, 666; ends capped at 1001.
    assert chunk_bounds(1001, 500) == [(0, 500), (333, 833), (666, 1001)]


def test_chunk_bounds_rejects_bad_size():
    with pytest.raises(ValueError, match="chunk size"):
        chunk_bounds(10, 0)


@pytest.mark.parametrize("size", [*range(1, 13), 299, 300, 500])
def test_chunk_bounds_match_reference_exhaustively(size):
    for length in [*range(1, 400), *range(size * 4 - 3, size * 4 + 4)]:
        seq = "".join("ACGT"[(i * 7 + i // 3) % 4] for i in range(length))
        got = [seq[a:b] for a, b in chunk_bounds(length, size)]
        assert got == ref_chunks(seq, size), (length, size)
        whole = chunk_bounds(length, size)
        for first, stop in ((0, 1), (1, 3), (len(whole) - 1, len(whole) + 5), (2, 2)):
            starts, ends = chunk_edges(length, size, first, stop)  # a record's part
            assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == \
                whole[first:stop], (length, size, first, stop)


def test_chunk_bounds_cover_and_fit():
    for size in (1, 2, 7, 300, 500):
        for length in range(1, 1600, 7):
            bounds = chunk_bounds(length, size)
            assert bounds[0][0] == 0 and bounds[-1][1] == length
            assert all(0 < b - a <= size for a, b in bounds)
            assert all(b1 >= a2 for (_, b1), (a2, _) in itertools.pairwise(bounds))
            assert len(bounds) == -(-length // size)


def test_chunk_record_ids_and_case():
    chunks = chunk_record(rec("r1", "acgT" * 300), 500)
    assert [c.id for c in chunks] == ["r1_chunk_1", "r1_chunk_2", "r1_chunk_3"]
    assert chunks[1] == Chunk("r1_chunk_2", "r1", 1, 399, 899, ("acgT" * 300)[399:899])
    assert chunk_record(rec("e", ""), 500) == []


# ---------------------------------------------------------------------- translation
def test_dropped_codons_shift_protein_and_slice_quirk():
    # F1 reads ATG NNN AAA: NNN is dropped, so p=2 and the slice is seq[0:7], not the 9 bases.
    # rc = TTTNNNCAT: R1 reads TTT NNN CAT -> FH, slice rc[0:7].
    expected = [("F1", "ATGNNNA", "MK"), ("R1", "TTTNNNC", "FH")]
    assert translate_six_frames(["ATGNNNAAA"]) == [expected]
    assert translate_six_frames(["atgnnnaaa"]) == [expected]


def test_stop_codons_and_slices_capped_at_end():
    # F1 = *M (dropped); rc = CATTTA.
    assert translate_six_frames(["TAAATG"]) == [[
        ("F2", "AAAT", "K"), ("F3", "AATG", "N"),
        ("R1", "CATTTA", "HL"), ("R2", "ATTT", "I"), ("R3", "TTTA", "F"),
    ]]


def test_complement_keeps_non_acgt():
    # Only A/C/G/T are complemented; R and Y stay: rc of RACGTTY is YAACGTR.
    # Codons holding R or Y are dropped, and each slice is 3p + 1 long.
    assert translate_six_frames(["RACGTTY"]) == [[
        ("F1", "RACG", "V"), ("F2", "ACGT", "T"), ("F3", "CGTT", "R"),
        ("R1", "YAAC", "R"), ("R2", "AACG", "N"), ("R3", "ACGT", "T"),
    ]]


def test_short_and_empty_chunks():
    assert translate_six_frames(["", "A", "AC", "ACG", "TAA"]) == [
        [], [], [], [("F1", "ACG", "T"), ("R1", "CGT", "R")], [("R1", "TTA", "L")],
    ]


def test_batch_mixed_lengths_equals_one_by_one():
    seqs = ["ATG" * k + "ACGTN"[: k % 5] for k in range(0, 400, 13)]
    seqs += ["AAATTTGGG" * 60, "", "CCCAAAGGG" * 3]
    batch = translate_six_frames(seqs)
    assert batch == [translate_six_frames([s])[0] for s in seqs]
    assert batch == [ref_frames(s) for s in seqs]


@pytest.mark.parametrize("length", [3, 4, 5, 6, 299, 300, 301, 302, 500])
def test_batch_of_equal_lengths(length):
    # Equal lengths take the no-scatter path, with and without padding to 3m + 2 columns.
    seqs = [("ATGAAACCCGGGTTTNACGTTAGCCA" * 20)[k: k + length] for k in range(0, 30, 2)]
    assert translate_six_frames(seqs) == [ref_frames(s) for s in seqs]


# ------------------------------------------------------------------------ streaming
def test_iter_record_frames_objects_and_skips():
    records = [rec("a", "ATGNNNAAA"), rec("empty", ""), rec("stops", "GCTAGTTAGTTAGC")]
    out = list(iter_record_frames(records, 500))
    assert [rf.record for rf in out] == records
    a, empty, stops = out
    assert a.chunks == [Chunk("a_chunk_1", "a", 0, 0, 9, "ATGNNNAAA")]
    assert a.frames == [[Frame("a_chunk_1F1", "a_chunk_1", "F1", "ATGNNNA", "MK"),
                         Frame("a_chunk_1R1", "a_chunk_1", "R1", "TTTNNNC", "FH")]]
    assert a.skipped == []
    assert (empty.chunks, empty.frames) == ([], [])
    assert empty.skipped == [Skip("empty", "sequence", SKIP_EMPTY)]
    assert stops.frames == [[]]
    assert stops.skipped == [Skip("stops_chunk_1", "chunk", SKIP_NO_FRAME)]


def test_iter_record_frames_batching_does_not_change_results():
    records = [rec(f"r{i}", ("ATGGCCAAAGGG" * (i + 3) + "TTAN")[: 40 + 37 * i]) for i in range(30)]
    whole = list(iter_record_frames(records, 50))
    for batch_bases in (1, 7, 100, 1000):
        assert list(iter_record_frames(records, 50, batch_bases=batch_bases)) == whole
    assert iter_record_frames(records, 0)  # lazy: the error comes on first use
    with pytest.raises(ValueError):
        next(iter_record_frames(records, 0))


# ----------------------------------------------------------------------- properties
# Lower-case codons, stops, IUPAC codes, gaps and odd lengths that shift the frames.
SPECIAL = [*(c.lower() for c in SENSE[::6]), "TAA", "TGA", "N", "NNN", "n", "R", "Y", "k",
           "M", "S", "W", "B", "D", "H", "V", "U", "-", "A", "CG"]


@st.composite
def chunked_sequences(draw):
    size = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 300, 500]))
    length = max(0, size * draw(st.integers(0, 3)) + draw(st.integers(-4, 4)))
    # Mostly sense codons, so long stop-free frames exist and get kept.
    token = st.sampled_from(SENSE) | st.sampled_from(SENSE) | st.sampled_from(SPECIAL)
    tokens = draw(st.lists(token, min_size=1, max_size=40))
    text = "".join(tokens)
    seq = (text * (length // len(text) + 1))[:length]
    return size, seq


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chunked_sequences(), min_size=1, max_size=4), st.integers(1, 2000))
def test_matches_reference(items, batch_bases):
    for size in {s for s, _ in items}:
        records = [rec(f"s{i}", seq) for i, (_, seq) in enumerate(items)]
        got = list(iter_record_frames(records, size, batch_bases=batch_bases))
        for rf, record in zip(got, records, strict=True):
            chunks = ref_chunks(record.seq, size) if record.seq else []
            assert [c.seq for c in rf.chunks] == chunks
            assert [c.id for c in rf.chunks] == [f"{record.id}_chunk_{k + 1}"
                                                 for k in range(len(chunks))]
            expected = [[(f"{record.id}_chunk_{k + 1}{n}", nuc, prot)
                         for n, nuc, prot in ref_frames(c)] for k, c in enumerate(chunks)]
            assert [[(f.id, f.nucleotide, f.protein) for f in fs] for fs in rf.frames] == expected
            no_frame = [f"{record.id}_chunk_{k + 1}" for k, e in enumerate(expected) if not e]
            assert [s.id for s in rf.skipped] == (no_frame if chunks else [record.id])
