"""Reading FASTA/FASTQ: formats, compression by content, stdin, streaming and every bad input."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import os
import random
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest
import xopen

from virnucpro.errors import InputError
from virnucpro.reader import (
    InputSummary,
    ReadStats,
    Record,
    input_stem,
    read_records,
    validate_inputs,
)

FASTA = b">s1 first record\nACGTN\nacgt\n>s2\n\n>s3\tdesc\nRYKM-U\n"
EXPECTED = [
    Record("s1", "s1 first record", "ACGTNacgt", "IN"),
    Record("s2", "s2", "", "IN"),
    Record("s3", "s3\tdesc", "RYKM-T", "IN"),  # RNA is read as DNA: U as T
]


def expected(source: str) -> list[Record]:
    return [Record(r.id, r.header, r.seq, source) for r in EXPECTED]


def zstd_compress(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with xopen.xopen(buffer, "wb", format="zst", threads=0) as fh:
        fh.write(data)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read(paths: list[str]) -> list[Record]:
    return list(read_records(paths))


# ---------------------------------------------------------------------- good inputs
def test_fasta_plain(tmp_path):
    path = write(tmp_path, "x.fa", FASTA)
    assert read([path]) == expected(path)


def test_fasta_crlf_blank_lines_and_inner_spaces(tmp_path):
    data = b"\r\n\r\n>s1 first record\r\nACG TN\r\n\r\nacgt\r\n>s2\r\n>s3\tdesc\r\nRYKM-U"
    path = write(tmp_path, "x.fa", data)
    assert read([path]) == expected(path)


def test_fasta_records_span_read_blocks(tmp_path):
    # Records longer than the 1 MiB read block, and a '>' right at a block boundary.
    first = b">a\n" + b"ACGT" * 300_000 + b"\n"
    data = first + b">b x\n" + (b"C" * 59 + b"\n") * 20_000 + b">c\n" + b"G" * 10
    path = write(tmp_path, "big.fasta", data)
    records = read([path])
    assert [r.id for r in records] == ["a", "b", "c"]
    assert records[0].seq == "ACGT" * 300_000
    assert records[1].seq == "C" * 59 * 20_000
    assert records[2].seq == "G" * 10


@pytest.mark.parametrize("name", ["x.fa", "x.fa.gz", "x.txt", "x.fq"])
@pytest.mark.parametrize("compress", [None, gzip.compress, bz2.compress, lzma.compress,
                                      zstd_compress])
def test_compression_detected_by_content_not_name(tmp_path, name, compress):
    data = FASTA if compress is None else compress(FASTA)
    path = write(tmp_path, name, data)
    assert read([path]) == expected(path)


def test_multi_member_gzip(tmp_path):
    path = write(tmp_path, "x", gzip.compress(FASTA[:30]) + gzip.compress(FASTA[30:]))
    assert read([path]) == expected(path)


def test_fastq_plain_gzip_and_crlf(tmp_path):
    fastq = (b"@s1 first record\nACGTNacgt\n+\nIIIIIIIII\n@s2\n\n+\n\n"
             b"@s3\tdesc\nRYKM-U\n+s3\tdesc\n!!!!!!\n")
    for name, data in [("a.fq", fastq), ("b.fastq.gz", gzip.compress(fastq)),
                       ("c.fq", fastq.replace(b"\n", b"\r\n"))]:
        path = write(tmp_path, name, data)
        assert read([path]) == expected(path)


def test_fasta_long_blank_preamble_and_hash_comment_lines(tmp_path):
    # More leading blank space than one read buffer; dnaio skips '#' lines inside FASTA as
    # comments (a FASTA variant it supports), so they never reach validation.
    data = b"\n" * (3 << 20) + b">a\nAC\n# a comment\nGT\n"
    for name, content in [("blank.fa", data), ("blank.fa.gz", gzip.compress(data))]:
        path = write(tmp_path, name, content)
        assert read([path]) == [Record("a", "a", "ACGT", path)]


def test_several_files_in_order_and_stdin(tmp_path, monkeypatch):
    a = write(tmp_path, "a.fa", b">a1\nAC\n>a2\nGT\n")
    b = write(tmp_path, "b.fq", b"@b1\nTT\n+\nII\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(b">c1\nGG\n"))))
    assert [(r.id, r.seq, r.source) for r in read([a, "-", b])] == [
        ("a1", "AC", a), ("a2", "GT", a), ("c1", "GG", "-"), ("b1", "TT", b)]


def test_stdin_without_buffer_attribute(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.BytesIO(b">x\nAC\n"))
    assert read(["-"]) == [Record("x", "x", "AC", "-")]


def test_empty_sequence_is_not_an_error(tmp_path):
    path = write(tmp_path, "e.fa", b">only\n")
    assert read([path]) == [Record("only", "only", "", path)]


@pytest.mark.parametrize(("path", "stem"), [
    ("dir/sample.fa", "sample"), ("sample.fasta.gz", "sample"), ("S.FNA", "S"),
    ("reads.fq.gz", "reads"), ("reads.fastq", "reads"), ("x.tar", "x.tar"),
    ("my.sample.fa", "my.sample"), ("-", "stdin"), (".fa", ".fa"), ("a.fa.fa", "a.fa"),
])
def test_input_stem(path, stem):
    assert input_stem(path) == stem


def test_streaming_memory_does_not_grow_with_input(tmp_path):
    record = b"ACGT" * 25_000 + b"\n"  # 100 kb per record

    def peak(n: int) -> int:
        path = write(tmp_path, f"m{n}.fa", b"".join(b">r%d\n" % i + record for i in range(n)))
        tracemalloc.start()
        for _ in read_records([path]):
            pass
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = peak(10), peak(80)  # 1 MB vs 8 MB of input
    assert large < small * 1.5 + 200_000, (small, large)
    assert large < 6_000_000


# ----------------------------------------------------------------------- bad inputs
BAD = [
    # name, content, substrings the one-line message must hold
    ("empty.fa", b"", ["empty file"]),
    ("blank.fa", b"\n \n\r\n", ["empty"]),
    ("empty.fa.gz", gzip.compress(b""), ["empty"]),
    ("text.fa", b"hello world\n", ["not a FASTA or FASTQ file"]),
    ("binary.fa", bytes(range(256)) * 4, ["not a FASTA or FASTQ file", "binary"]),
    ("trunc.fa.gz", gzip.compress(FASTA * 1000)[:200], ["truncated or corrupt"]),
    ("protein.fa", b">p1\nACGT\n>p2 a protein\nMKVLAT\nEEQ\n", ["record 2 ('p2')", "'L'"]),
    ("lower_protein.fa", b">p1\nacgtqq\n", ["record 1 ('p1')", "'q'"]),
    ("utf8.fa", ">u1\nACGTÄ\n".encode(), ["record 1 ('u1')", "'Ä'"]),
    ("digits.fa", b">d1\nACGT\nAC1T\n", ["record 1 ('d1')", "'1'"]),
    ("dup.fa", b">a x\nAC\n>b\nGG\n>a y\nTT\n", ["record 3", "duplicate", "'a'", "record 1"]),
    ("noheader.fa", b">\nACGT\n", ["record 1", "empty header"]),
    ("bad.fq", b"@r1\nACGT\n+\nIII\n", ["invalid FASTQ", "line"]),
    ("trunc.fq", b"@r1\nACGT\n+\nIIII\n@r2\nAC",
     ["record 2 ('r2'): invalid FASTQ at line 6", "truncated", "it reads '@r2', 'AC'"]),
    ("bad_plus.fq", b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n-\nIIII\n",
     ["record 2 (after 'r1'): invalid FASTQ at line 7", "'+'"]),
    ("protein.fq", b"@r1\nACGT\n+\nIIII\n@r2\nMKLE\n+\nIIII\n", ["record 2 ('r2')", "'L'"]),
    ("dup.fq", b"@r1\nA\n+\nI\n@r1\nC\n+\nI\n", ["record 2", "duplicate", "record 1"]),
    # Decoding as text fails a block at a time, so only a lower bound on the record is known.
    ("latin1.fa", b">a\nAC\n>b\nAC\xc4GT\n", ["not UTF-8", "record 1 or later", "0xc4"]),
    ("blank_first.fq", b"\n@r1\nA\n+\nI\n", ["invalid FASTQ", "line 1"]),
    ("blank_in.fq", b"@r1\nA C\n+\nIII\n", ["record 1 ('r1')", "' '"]),
    ("trunc.fa.zst", zstd_compress(b"".join(b">r%d\nACGT\n" % i for i in range(9000)))[:3000],
     ["truncated or corrupt"]),
    ("corrupt.fa.zst", zstd_compress(FASTA)[:8] + bytes(range(256)) * 2, ["truncated or corrupt"]),
]


@pytest.mark.parametrize(("name", "data", "needles"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_messages(tmp_path, name, data, needles):
    path = write(tmp_path, name, data)
    with pytest.raises(InputError) as info:
        read([path])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message


def test_a_truncated_fastq_names_the_record_in_a_short_excerpt(tmp_path):
    """Issue 21: a read cut off mid-record gave dnaio's 500-character dump of it, line ends
    escaped; the message names the record by number and id and quotes a few characters."""
    read1 = b"@read1 run=7\n" + b"ACGT" * 250 + b"\n+\n" + b"I" * 1000 + b"\n"
    cut = read1.replace(b"read1", b"read2")[:700]
    path = write(tmp_path, "cut.fq.gz", gzip.compress(read1 + cut))
    with pytest.raises(InputError) as info:
        read([path])
    assert str(info.value) == (
        f"{path}: record 2 ('read2'): invalid FASTQ at line 6: the file ends inside this "
        "record (truncated file?); it reads '@read2 run=7', 'ACGTACGTACGTACGTACGTACGTACG...'")
    assert "\\n" not in str(info.value)


def test_missing_unreadable_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read([str(tmp_path / "missing.fa")])
    with pytest.raises(InputError, match="is a directory"):
        read([str(tmp_path)])
    with pytest.raises(InputError, match="no input"):
        read([])
    with pytest.raises(InputError, match="stdin"):
        read(["-", "-"])


def test_missing_file_is_reported_before_reading_anything(tmp_path):
    good = write(tmp_path, "good.fa", b">a\nAC\n")
    records = read_records([good, str(tmp_path / "missing.fa")])
    with pytest.raises(InputError, match=r"missing\.fa: no such file"):
        next(records)


def test_duplicate_across_files_names_both(tmp_path):
    a = write(tmp_path, "a.fa", b">x\nAC\n>shared desc\nGG\n")
    b = write(tmp_path, "b.fq", b"@y\nA\n+\nI\n@shared\nC\n+\nI\n")
    with pytest.raises(InputError) as info:
        read([a, b])
    assert str(info.value) == (f"{b}: record 2: duplicate record id 'shared' "
                               f"(first seen in {a}, record 2)")


def test_validation_is_fast(tmp_path):
    # A 20 Mb record is validated without a per-character Python loop.
    import time

    path = write(tmp_path, "long.fa", b">long\n" + (b"ACGTN" * 12 + b"\n") * 333_334)
    start = time.perf_counter()
    (record,) = read([path])
    assert len(record.seq) == 20_000_040
    assert time.perf_counter() - start < 2.0


def test_seen_ids_finds_repeats_across_flushes(monkeypatch):
    from virnucpro.seen_ids import SeenIds

    monkeypatch.setattr(SeenIds, "_RECENT", 4)  # many flushes into the sorted arrays
    seen = SeenIds()
    ids = [f"read{i}" for i in range(200)]
    assert [seen.add(rid, place) for place, rid in enumerate(ids, 1)] == [None] * 200
    assert seen.flush() is None
    for place, rid in enumerate(ids, 1):  # old ones live in the arrays: found at the flush
        fresh = SeenIds()
        monkeypatch.setattr(fresh, "_hashes", seen._hashes)
        monkeypatch.setattr(fresh, "_places", seen._places)
        assert fresh.add(rid, 1000 + place) in (None, (place, 1000 + place, rid))
        assert fresh.flush() in (None, (place, 1000 + place, rid))
    assert seen.add("read_new", 5000) is None
    assert seen.add("read_new", 5001) == (5000, 5001, "read_new")  # a recent one: at once
    # Of several repeats in one batch, the earliest is reported.
    later = SeenIds()
    for place, rid in enumerate(ids[:8], 1):
        later.add(rid, place)
    later.flush()
    later.add("x", 100)
    later.add(ids[5], 101)
    later.add(ids[2], 102)
    assert later.flush() == (6, 101, ids[5])


# ---------------------------------------------------------------------------- RNA input
def test_rna_is_read_as_dna_counted_and_logged_once(tmp_path, caplog):
    path = write(tmp_path, "r.fa", b">d1\nACGT\n>r1 x\nACGU\n>r2\nacgu\n>r3\nUUuuN\n")
    stats = ReadStats()
    with caplog.at_level(logging.INFO, logger="virnucpro.reader"):
        records = list(read_records([path], stats))
    assert [(r.id, r.seq) for r in records] == [
        ("d1", "ACGT"), ("r1", "ACGT"), ("r2", "acgt"), ("r3", "TTttN")]
    assert stats.rna_records == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: record 2 ('r1') is RNA: reading U as T and u as t (and in any later RNA record)"]


def test_translate_of_rna_equals_translate_of_the_dna(tmp_path, data_dir):
    from virnucpro.cli import main

    dna = (data_dir / "vanilla" / "test_with_orfs.fa").read_text() + ">low\nacgtttagcatg\n"
    rna = "".join(line if line.startswith(">") else line.replace("T", "U").replace("t", "u")
                  for line in dna.splitlines(keepends=True))
    assert rna != dna
    outputs = {}
    for kind, text in (("dna", dna), ("rna", rna)):
        (tmp_path / kind).mkdir()
        path = write(tmp_path / kind, "x.fa", text.encode())
        assert main(["translate", path, "-o", str(tmp_path / kind / "out")]) == 0
        outputs[kind] = {p.name: p.read_bytes() for p in (tmp_path / kind / "out").iterdir()}
    assert sorted(outputs["rna"]) == ["x_chunked500.fa", "x_identified_nucleotide.fa",
                                      "x_identified_protein.faa", "x_skipped.tsv"]
    assert outputs["rna"] == outputs["dna"]
    stats = ReadStats()
    records = list(read_records([str(tmp_path / "rna" / "x.fa")], stats))
    assert stats.rna_records == len(records) == 3


# ----------------------------------------------------------------- pre-pass validation
BAD_AT_THE_END = [  # 5000 good records, then a bad one; the message after "{path}: "
    (b">r%d\nACGT\n", b">last\nACGTQ\n", "record 5001 ('last'): invalid character 'Q' "
     "(not an IUPAC nucleotide code; is this protein?)"),
    (b">r%d\nACGT\n", b">r7\nAC\n", "record 5001: duplicate record id 'r7' (first seen in "
     "{path}, record 8)"),
    (b"@r%d\nACGT\n+\nIIII\n", b"@last\nACGT\n+\nII\n", "record 5001 (after 'r4999'): "
     "invalid FASTQ at line 20004: Length of sequence and qualities differ"),
    (b"@r%d\nACGT\n+\nIIII\n", b"@last read\nACGT\n", "record 5001 ('last'): invalid FASTQ "
     "at line 20003: the file ends inside this record (truncated file?); it reads "
     "'@last read', 'ACGT'"),
    (b">r%d\nACGT\n", b">\nAC\n", "record 5001: record with an empty header"),
]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("good", "bad", "message"), BAD_AT_THE_END)
def test_validate_inputs_raises_what_read_records_raises(tmp_path, good, bad, message, gz):
    first = write(tmp_path, "first.fa", b">a\nAC\n")
    data = b"".join(good % i for i in range(5000)) + bad
    last = write(tmp_path, "last.fa", gzip.compress(data) if gz else data)
    with pytest.raises(InputError) as pre:
        validate_inputs([first, last])
    with pytest.raises(InputError) as main:
        read([first, last])
    assert str(pre.value) == str(main.value) == f"{last}: " + message.format(path=last)


def test_validate_inputs_totals(tmp_path):
    a = write(tmp_path, "a.fa", b">a1\nACGU\n>a2\nAC GT\nNN\n")
    b = write(tmp_path, "b.fq.gz", gzip.compress(b"@b1\nTTu\n+\nIII\n"))
    assert validate_inputs([a, b], chunk_size=3) == InputSummary(
        files=2, records=3, bases=13, bytes=os.path.getsize(a) + os.path.getsize(b),
        rna_records=2, chunks=2 + 2 + 1,  # 4, 6 and 3 bases in chunks of 3
        sha256=tuple(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in (a, b)))
    with pytest.raises(InputError, match=r"missing\.fa: no such file"):
        validate_inputs([a, str(tmp_path / "missing.fa")])


def test_validate_inputs_skips_stdin(tmp_path, monkeypatch):
    a = write(tmp_path, "a.fa", b">a1\nAC\n")
    stdin = io.BytesIO(b">a1\nGG\n")  # a duplicate that only the main read can see
    monkeypatch.setattr(sys, "stdin", stdin)
    assert validate_inputs([a, "-"]) == InputSummary(1, 1, 2, os.path.getsize(a), 0, sha256=(
        hashlib.sha256(Path(a).read_bytes()).hexdigest(), None))  # stdin: not hashed
    assert stdin.tell() == 0
    with pytest.raises(InputError, match="stdin: record 1: duplicate record id 'a1'"):
        read([a, "-"])


def test_pipes_are_read_once_and_have_no_size(tmp_path):
    a = write(tmp_path, "a.fa", b">a1\nAC\n")
    fifo = str(tmp_path / "pipe.fa")
    os.mkfifo(fifo)
    checker = threading.Thread(target=validate_inputs, args=([fifo, a],), daemon=True)
    checker.start()
    checker.join(10)
    opened = checker.is_alive()
    if opened:  # it waits for a writer: give it an empty one so that it ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not opened, "validate_inputs opened a pipe, which the main read then finds empty"
    assert validate_inputs([a, fifo]) == InputSummary(1, 1, 2, os.path.getsize(a), 0, sha256=(
        hashlib.sha256(Path(a).read_bytes()).hexdigest(), None))  # a pipe: not hashed

    def feed() -> None:
        with open(fifo, "wb") as fh:
            fh.write(gzip.compress(b">p1\nGG\n"))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    stats = ReadStats()
    assert [(r.id, r.seq) for r in read_records([fifo, a], stats)] == [("p1", "GG"), ("a1", "AC")]
    writer.join(10)
    assert (stats.bytes_total, stats.bytes_done) == (None, os.path.getsize(a))


def test_validate_inputs_memory_does_not_grow_with_input(tmp_path):
    from virnucpro.seen_ids import SeenIds

    rng = random.Random(0)

    def peak(fn) -> int:
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    def beyond_id_set(n: int, length: int) -> int:
        """Peak Python memory of validate_inputs on `n` records, less that of the id set."""
        seqs = ["".join(rng.choices("ACGT", k=length)) for _ in range(4)]
        path = write(tmp_path, f"v{n}.fa.gz", gzip.compress("".join(
            f">r{i}\n{seqs[i % 4]}\n" for i in range(n)).encode(), 1))
        summaries = []
        total = peak(lambda: summaries.append(validate_inputs([path])))
        (got,) = summaries
        assert (got.files, got.records, got.bases, got.bytes, got.rna_records) == (
            1, n, n * length, os.path.getsize(path), 0)
        def add_ids() -> None:
            seen = SeenIds()
            for i in range(n):
                seen.add(f"r{i}", i)

        return total - peak(add_ids)

    small, large = beyond_id_set(10, 100_000), beyond_id_set(80, 100_000)  # 1 MB, 8 MB
    assert large < small * 1.2 + 100_000, (small, large)
    small, large = beyond_id_set(1_000, 50), beyond_id_set(25_000, 50)  # 0.06 MB, 1.4 MB
    assert large < small * 1.2 + 100_000, (small, large)


# ---------------------------------------------------------------------- byte progress
def test_bytes_done_follows_the_compressed_file(tmp_path):
    # 12 Mb of random bases, about 4 MB compressed: several reads of the raw file.
    bases = bytes(b"ACGT"[i % 4] for i in range(256))
    seq = random.Random(0).randbytes(12_000_000).translate(bases)
    data = b"".join(b">r%d\n%s\n" % (i, seq[i * 1000:(i + 1) * 1000]) for i in range(12_000))
    path = write(tmp_path, "p.fa.gz", gzip.compress(data, compresslevel=1))
    size = os.path.getsize(path)
    stats = ReadStats()
    seen = [(stats.bytes_total, stats.bytes_done) for _ in read_records([path], stats)]
    assert {total for total, _ in seen} == {size}
    done = [d for _, d in seen]
    assert done == sorted(done) and 0 < done[0] < size // 2
    assert len(set(done)) > 3  # it moves while records stream, not only at the end
    assert stats.bytes_done == size


def test_bytes_done_over_several_files_and_stdin(tmp_path, monkeypatch):
    a = write(tmp_path, "a.fa.gz", gzip.compress(b">a1\nAC\n>a2\nGT\n"))
    b = write(tmp_path, "b.fa", b">b1\nAAAA\n")
    size_a, size_b = os.path.getsize(a), os.path.getsize(b)
    stats = ReadStats(rna_records=5, bytes_done=7)  # read_records starts it from zero
    seen = [(r.id, stats.bytes_total, stats.bytes_done) for r in read_records([a, b], stats)]
    assert seen == [("a1", size_a + size_b, size_a), ("a2", size_a + size_b, size_a),
                    ("b1", size_a + size_b, size_a + size_b)]
    assert (stats.rna_records, stats.bytes_done) == (0, size_a + size_b)
    monkeypatch.setattr(sys, "stdin", io.BytesIO(b">c1\nGG\n"))
    seen = [(r.id, stats.bytes_total, stats.bytes_done) for r in read_records([a, "-"], stats)]
    assert seen == [("a1", None, size_a), ("a2", None, size_a), ("c1", None, size_a)]
    assert stats.bytes_done == size_a
