"""Blocks of records scanned with numpy (`blocks.py`) give what the record parser gives.

The parent of a run never parses the records of a plain block (issue 19): it scans blocks,
groups their text into units, and the workers parse it. These tests hold the scan to the
record-by-record parser on valid input of many layouts, and check that a mistake anywhere
still gets the parser's one line, with the right record and line numbers.
"""

from __future__ import annotations

import gzip
import io
import random

import numpy as np
import pytest

from virnucpro.blocks import Blocks, scan
from virnucpro.errors import InputError
from virnucpro.reader import parse_text, read_blocks, read_records, validate_inputs
from virnucpro.runtime.units import record_units, text_pieces
from virnucpro.seen_ids import SeenIds


def fasta_record(rng: random.Random, i: int) -> str:
    seq = "".join(rng.choice("ACGTNacgtU-RY") for _ in range(rng.randint(0, 700)))
    width = rng.choice([60, 80, 10_000])
    lines = [seq[j:j + width] for j in range(0, len(seq), width)]
    if rng.random() < 0.1:
        lines = [line + rng.choice([" ", "\t"]) for line in lines]
    if rng.random() < 0.1:
        lines.append("")  # a blank line
    if lines and rng.random() < 0.05:
        lines[0] = lines[0][:5] + "\r" + lines[0][5:]  # a lone CR: a line end to the parser
    end = "\r\n" if rng.random() < 0.05 else "\n"
    # A blank before the id is left to the parser, for the rest of the file: seldom here.
    header = rng.choice([f"r{i}", f"r{i} description with U", f"r{i}\tx"] * 30 +
                        [f" r{i} lead", f"r{i} trailing \t\x0b", f"r{i} a\rb"])
    return ">" + header + end + "".join(line + end for line in lines)


def fastq_record(rng: random.Random, i: int) -> str:
    seq = "".join(rng.choice("ACGTNu") for _ in range(rng.randint(0, 300)))
    return f"@q{i} d{rng.choice(['', ' '])}\n{seq}\n+\n{'I' * len(seq)}\n"


def by_parser(data: bytes, fasta: bool, rna: list[bool]) -> list[tuple[str, str, str, bool]]:
    records = parse_text(data, fasta, "x")
    return [(r.id, r.header, r.seq, u) for r, u in zip(records, rna[-len(records):],
                                                        strict=True)]


def by_blocks(data: bytes, fasta: bool, size: int,
              rna: list[bool]) -> tuple[list[tuple[str, str, str, bool]], int]:
    """Records through Blocks (each block's text parsed as a worker does, its lengths and ids
    checked against them), then the parser on the rest (`rna`: which records have a U or u);
    and how many came from blocks."""
    blocks = Blocks(io.BufferedReader(io.BytesIO(data)), fasta, "x", size)
    out: list[tuple[str, str, str, bool]] = []
    for block in blocks:
        records = parse_text(block.data, fasta, "x", block.first)
        assert [len(r.seq) for r in records] == block.lengths.tolist()
        assert [i.decode() for i in block.ids()] == [r.id for r in records]
        # How the parent reads a record it cuts into parts.
        assert [block.plain_record(k) for k in range(len(block))] == \
            [(r.header, r.seq) for r in records]
        out += [(r.id, r.header, r.seq, k in block.rna) for k, r in enumerate(records)]
    from_blocks = len(out)
    rest = blocks.rest()
    if rest is not None:
        out += by_parser(rest.read(), fasta, rna[from_blocks:])
    return out, from_blocks


@pytest.mark.parametrize("fasta", [True, False], ids=["fasta", "fastq"])
def test_blocks_read_what_the_parser_reads(fasta):
    rng = random.Random(7)
    taken = 0
    for trial in range(120):
        records = [(fasta_record if fasta else fastq_record)(rng, i)
                   for i in range(rng.randint(1, 50))]
        rna = [bool({"U", "u"} & set(r.split("\n", 1)[1].split("+")[0])) for r in records]
        text = "".join(records)
        if rng.random() < 0.3:
            text = text.rstrip("\n")  # no newline at the end
        data = text.encode()
        got, from_blocks = by_blocks(data, fasta, rng.choice([64, 500, 4096, 1 << 18]), rna)
        assert got == by_parser(data, fasta, rna), (trial, data[:200])
        taken += from_blocks
    assert taken > 1000  # most records came from scanned blocks


@pytest.mark.parametrize("fasta", [True, False], ids=["fasta", "fastq"])
def test_a_block_holds_little_beyond_a_long_record(fasta):
    """A record longer than the piece read is read in many pieces, and its block ends at
    most about a piece after it: the parent's memory follows the longest record, not how
    far reading ran ahead of it (issue 19's memory at 30x)."""
    rng = random.Random(3)
    size, long = 1000, "".join(rng.choice("ACGT") for _ in range(50_000))
    short = [f">s{i}\nACGT\n" if fasta else f"@s{i}\nACGT\n+\nIIII\n" for i in range(400)]
    first = f">r0\n{long}\n" if fasta else f"@r0\n{long}\n+\n{'I' * len(long)}\n"
    data = "".join([first, *short, first.replace("r0", "r400"), *short[:50]]).encode()
    blocks = list(Blocks(io.BufferedReader(io.BytesIO(data)), fasta, "x", size))
    assert b"".join(b.data for b in blocks) == data
    for block in blocks:
        longest = int(np.diff(block.starts).max())
        assert len(block.data) <= longest + 2 * size, (len(block.data), longest)


def test_rna_records_are_found_in_the_sequence_not_the_header():
    data = b">U1 Uu\nACGT\n>r2\nACGu\n>r3 U\nAC\nGU\n>r4\n\n"
    block = scan(data, True)
    assert block is not None
    assert block.rna.tolist() == [1, 2]
    assert block.lengths.tolist() == [4, 4, 4, 0]


@pytest.mark.parametrize("data", [
    b">a\nACGT\n>b\nACXT\n",  # an invalid character
    b">a\nACGT\n>\nACGT\n",  # no id
    b">a\nACGT\n> b\nACGT\n",  # a blank before the id
    ">a\nACGT\n>b\u00e9\nACGT\n".encode(),  # not ASCII
    b"\n>a\nACGT\n",  # a blank line first
    b">a\x1cb\nACGT\n",  # a separator that str.split takes as whitespace
    b">a\nACGT\n>b x\ry\nACGT\n",  # a CR inside a header: the parser ends the line there
], ids=["invalid", "no-id", "blank-id", "non-ascii", "leading-blank", "separator",
        "cr-in-header"])
def test_scan_leaves_what_it_does_not_take_to_the_parser(data):
    assert scan(data, True) is None


@pytest.mark.parametrize("data", [
    b"@a\nACGT\n+\nIIII\n@b\nACG\n+\nIIII\n",  # qualities and bases differ in length
    b"@a\nACGT\n+a\nIIII\n",  # a '+' line with a description
    b"@a\r\nACGT\r\n+\r\nIIII\r\n",  # CR
    b"@a\nAC T\n+\nIIII\n",  # a blank in a FASTQ sequence
    b"@a\nACGT\n-\nIIII\n",  # no '+' line
], ids=["lengths", "plus-description", "cr", "blank", "no-plus"])
def test_fastq_scan_leaves_odd_records_to_the_parser(data):
    assert scan(data, False) is None


def test_a_mistake_in_a_later_block_names_the_same_record_and_line(tmp_path):
    good = "".join(f"@r{i}\nACGT\n+\nIIII\n" for i in range(5000))
    for tail, needle in (("@bad\nACXT\n+\nIIII\n", "record 5001 ('bad'): invalid character"),
                         ("@cut\nACGT\n+\n", "record 5001 ('cut')")):
        path = tmp_path / "r.fq.gz"
        path.write_bytes(gzip.compress((good + tail).encode()))
        messages = []
        for read in (read_records, read_blocks, validate_inputs):
            with pytest.raises(InputError) as exc:
                list(read([str(path)]))  # type: ignore[call-overload]
            messages.append(str(exc.value))
        assert needle in messages[0]
        assert messages == [messages[0]] * 3
    # A truncated record's line number counts the lines the blocks took.
    assert "line 20004" in messages[0]


def test_units_of_blocks_hold_the_records_the_parser_gives(tmp_path):
    rng = random.Random(3)
    lengths = [rng.choice([0, 150, 300, 301, 900, 5000]) for _ in range(3000)] + [700_000]
    lengths += [rng.choice([150, 600]) for _ in range(500)]
    path = tmp_path / "mixed.fa"
    path.write_text("".join(f">s{i} x\n{''.join(rng.choices('ACGT', k=n))}\n"
                            for i, n in enumerate(lengths)))
    for unit_frames in (60, 2048):
        from_blocks = list(record_units(read_blocks([str(path)]), 300, unit_frames))
        from_records = list(record_units(read_records([str(path)]), 300, unit_frames))
        assert any(u.text for u, _ in from_blocks)
        assert any(held is not None for _, held in from_blocks)  # the long record is split
        assert [u.index for u, _ in from_blocks] == list(range(len(from_blocks)))
        assert [(u.n_chunks, u.cost, text_pieces(u, 300), held) for u, held in from_blocks] == \
            [(u.n_chunks, u.cost, u.pieces, held) for u, held in from_records]


def test_ids_from_blocks_meet_ids_parsed_one_by_one(tmp_path):
    a, b = tmp_path / "a.fa", tmp_path / "b.fa"
    a.write_text("".join(f">r{i}\nACGT\n" for i in range(3000)))
    b.write_text(">x\nAC\n>r2999 again\nAC\n")
    with pytest.raises(InputError, match=r"b.fa: record 2: duplicate record id 'r2999' "
                                         r"\(first seen in .*a.fa, record 3000\)"):
        validate_inputs([str(a), str(b)])
    with pytest.raises(InputError, match="record 2: duplicate record id 'r2999'"):
        list(read_blocks([str(a), str(b)]))


def test_seen_ids_find_repeats_within_and_across_batches(monkeypatch):
    monkeypatch.setattr(SeenIds, "_RECENT", 8)
    seen = SeenIds()
    assert seen.add_many([b"a", b"b", b"c"], np.array([1, 2, 3])) is None
    assert seen.add("d", 4) is None
    # Within one batch, the earliest repeat is named, with where its id was first seen.
    assert seen.add_many([b"e", b"f", b"e", b"b"], np.array([5, 6, 7, 8])) == (5, 7, "e")
    later = SeenIds()
    assert later.add_many([b"a", b"b"], np.array([1, 2])) is None
    assert later.flush() is None
    assert later.add_many([b"x", b"b", b"a"], np.array([10, 11, 12])) is None
    assert later.flush() == (2, 11, "b")  # str and bytes ids are one id
    assert later.add("a", 13) is None
