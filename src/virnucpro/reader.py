"""Streaming FASTA/FASTQ reader with validation.

Compression (gzip, bzip2, xz, zstd) and format (FASTA or FASTQ) are detected from the content, never
from the file name: xopen decompresses, dnaio parses, and this module only checks the records.
Only one record (plus one read block) is held at a time. RNA is read as DNA (U as T, u as t).
A run's parent reads blocks of whole records instead (`read_blocks`, `blocks.py`): checked
with numpy, never parsed one by one there, and about 256 KiB (or one longer record) at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import itertools
import logging
import lzma
import os
import re
import stat
import sys
import zlib
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import dnaio
import numpy as np
import xopen

from virnucpro.blocks import Blocks, Scan
from virnucpro.errors import InputError
from virnucpro.input_errors import display, duplicate, fastq_error, looks_binary, one_line
from virnucpro.seen_ids import SeenIds

__all__ = ["InputSummary", "ReadStats", "Record", "check_inputs", "input_stem", "parse_text",
           "read_blocks", "read_records", "validate_inputs"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
# IUPAC nucleotide codes in either case, plus '-' (gap). Anything else is rejected.
_VALID = b"ACGTURYSWKMBDHVNacgturyswkmbdhvn-"
_INVALID = re.compile("[^" + re.escape(_VALID.decode()) + "]")
# dnaio strips line ends but keeps blanks inside FASTA sequence lines; we drop them, as Biopython
# (the original tool's parser) drops spaces.
_BLANKS = re.compile(r"[ \t\x0b\x0c]+")
# What the decompressors xopen may use raise on truncated or corrupt data, besides the
# standard library's; each is optional (zstd is in the standard library from Python 3.14).
_OPTIONAL_ERRORS = (("isal.isal_zlib", "error"), ("zlib_ng.zlib_ng", "error"),
                    ("compression.zstd", "ZstdError"), ("backports.zstd", "ZstdError"))
_COMPRESSED_SUFFIXES = (".gz", ".bgz", ".bz2", ".xz", ".zst")
_SEQUENCE_SUFFIXES = (".fasta", ".fas", ".fa", ".fna", ".ffn", ".frn", ".fsa", ".seq",
                      ".fastq", ".fq")
_RNA_TO_DNA = str.maketrans("Uu", "Tt")


def _decompress_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [EOFError, OSError, zlib.error, lzma.LZMAError]
    for module, name in _OPTIONAL_ERRORS:
        with contextlib.suppress(ImportError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


_DECOMPRESS_ERRORS = _decompress_errors()


@dataclass(frozen=True, slots=True)
class Record:
    """One input sequence."""

    id: str  # first whitespace-separated word of the header
    header: str  # full header line without '>' / '@'
    seq: str  # as in the input (case kept), no whitespace
    source: str  # the path as given ('-' for stdin), for messages


@dataclass(slots=True)
class ReadStats:
    """What `read_records` has read so far; it fills the one a caller passes, from zero, and
    updates it before each record is yielded (for a progress bar and the final report)."""

    rna_records: int = 0  # records that had a U or u, read as T or t
    # Size of the input files on disk; None when one is stdin, a pipe or another special file.
    bytes_total: int | None = None
    bytes_done: int = 0  # bytes of the raw (compressed) regular files consumed


@dataclass(frozen=True, slots=True)
class InputSummary:
    """Totals of the regular input files, from `validate_inputs`."""

    files: int  # regular files read (stdin, pipes and other special files are not)
    records: int
    bases: int  # sequence characters, blanks dropped
    bytes: int  # size of those files on disk, compressed or not
    rna_records: int  # records that had a U or u
    chunks: int = 0  # chunks of `chunk_size` those records are cut into (0: not asked)
    sha256: tuple[str | None, ...] = ()  # per input: of its raw bytes; None for stdin, pipes


class _Read(NamedTuple):
    """One checked record and where the reader stands in its file."""

    number: int  # record number in its file, from 1
    record: Record
    rna: bool  # had a U or u (now T or t)
    offset: int | None  # bytes of the raw file consumed so far; None unless a regular file


class _Block(NamedTuple):
    """A block of whole records (`blocks.scan`), and where the reader stands in its file."""

    scan: Scan
    offset: int | None


class _Before(NamedTuple):
    """What a file held before the part the record parser reads (after `Blocks` gave up)."""

    records: int = 0
    lines: int = 0
    name: str | None = None  # the last record's id, for messages


_NOTHING_BEFORE = _Before()


class _Fasta(NamedTuple):
    """What dnaio's FASTA reader builds per record. Its default record class rejects non-ASCII
    before we could name the record and the character."""

    name: str
    sequence: str
    qualities: None


def input_stem(path: str) -> str:
    """File name minus compression and FASTA/FASTQ suffixes; 'stdin' for '-'."""
    if path == "-":
        return "stdin"
    name = Path(path).name
    for suffixes in (_COMPRESSED_SUFFIXES, _SEQUENCE_SUFFIXES):
        lower = name.lower()
        for suffix in suffixes:
            if lower.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    return name


def check_inputs(paths: Sequence[str]) -> None:
    """Fail early, before any output is made, on inputs that cannot be opened."""
    if not paths:
        raise InputError("no input files given")
    if list(paths).count("-") > 1:
        raise InputError("'-' (stdin) given more than once")
    for path in paths:
        if path == "-":
            continue
        if not os.path.exists(path):
            raise InputError(f"{path}: no such file")
        if os.path.isdir(path):
            raise InputError(f"{path}: is a directory, not a FASTA/FASTQ file")
        if not os.access(path, os.R_OK):
            raise InputError(f"{path}: permission denied")


def read_records(paths: Sequence[str], stats: ReadStats | None = None,
                 ids_checked: bool = False) -> Iterator[Record]:
    """Yield the records of all `paths` in input order; ids must be unique across all.

    Pass a `ReadStats` to follow the bytes read and count the RNA records: it is set up when
    iteration starts, so `bytes_total` is known before the first record arrives.
    `ids_checked`: the ids were checked by `validate_inputs` over these very bytes (every
    input a regular file), so the record-id set is not kept again."""
    for item in _read(paths, stats, ids_checked, blocks=False):
        assert isinstance(item, Record)
        yield item


def read_blocks(paths: Sequence[str], stats: ReadStats | None = None,
                ids_checked: bool = False) -> Iterator[Record | Scan]:
    """`read_records`, with whole blocks of plain records (`blocks.Scan`) in place of their
    records wherever `blocks.scan` takes them: a run's parent never parses those records,
    its workers do (`parse_text`)."""
    return _read(paths, stats, ids_checked, blocks=True)


def parse_text(data: bytes, fasta: bool, source: str, first: int = 1) -> list[Record]:
    """The records of whole FASTA/FASTQ text (a `Scan`'s, or part of it) whose first record
    is number `first` of `source`."""
    stream = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
    return [rec for rec, _ in _parse(stream, fasta, display(source), source,
                                     _Before(first - 1))]


def _read(paths: Sequence[str], stats: ReadStats | None, ids_checked: bool,
          blocks: bool) -> Iterator[Record | Scan]:
    check_inputs(paths)
    regular = _regular_sizes(paths)
    sizes = [size or 0 for size in regular]
    starts = [0, *itertools.accumulate(sizes)]  # bytes before each file, and in all
    stats = ReadStats() if stats is None else stats
    stats.rna_records, stats.bytes_done = 0, 0
    stats.bytes_total = None if None in regular else starts[-1]
    for file_no, read in _checked(paths, check_ids=not ids_checked, blocks=blocks):
        if isinstance(read, _Block):
            if len(read.scan.rna):
                first = int(read.scan.rna[0])
                _count_rna(stats, paths[file_no], read.scan.first + first,
                           read.scan.ids()[first].decode(), len(read.scan.rna))
        elif read.rna:
            _count_rna(stats, paths[file_no], read.number, read.record.id)
        if read.offset is not None:  # a file may grow while we read it: stay monotonic
            stats.bytes_done = starts[file_no] + min(read.offset, sizes[file_no])
        yield read.scan if isinstance(read, _Block) else read.record
    stats.bytes_done = starts[-1]  # the parser reads each file to its end


def validate_inputs(paths: Sequence[str], chunk_size: int | None = None) -> InputSummary:
    """Read every regular input once, as `read_records` will, before any model loads; hash
    each one's raw bytes on the way (so it is read once for both), and count the chunks of
    `chunk_size` its records are cut into (for an exact progress total).

    Raises the `InputError` that `read_records` would raise for the same input; memory stays
    constant apart from the record-id set. Stdin ('-'), pipes and other special files cannot
    be read twice, so they are skipped: their records, and ids they share with a regular file,
    are checked only by `read_records`."""
    check_inputs(paths)
    sizes = _regular_sizes(paths)
    records = bases = rna = chunks = 0
    skip = {i for i, size in enumerate(sizes) if size is None}
    digests = {i: hashlib.sha256() for i in range(len(paths)) if i not in skip}
    for _, read in _checked(paths, skip, digests, blocks=True):
        lengths = (read.scan.lengths if isinstance(read, _Block)
                   else np.array([len(read.record.seq)]))
        records += len(lengths)
        bases += int(lengths.sum())
        rna += len(read.scan.rna) if isinstance(read, _Block) else read.rna
        if chunk_size:
            chunks += int((-(-lengths // chunk_size)).sum())
    regular = [size for size in sizes if size is not None]
    return InputSummary(files=len(regular), records=records, bases=bases, bytes=sum(regular),
                        rna_records=rna, chunks=chunks,
                        sha256=tuple(digests[i].hexdigest() if i in digests else None
                                     for i in range(len(paths))))


def _checked(paths: Sequence[str], skip: Container[int] = (),
             digests: dict[int, Any] | None = None, check_ids: bool = True,
             blocks: bool = False) -> Iterator[tuple[int, _Read | _Block]]:
    """The checked records of `paths` (or their blocks, see `read_blocks`), except the files
    numbered in `skip`, with the index of their file; ids must be unique across all files
    (unless `check_ids` is False: the caller checked them in an earlier read of the same
    bytes). `digests`: hashes that each file's raw bytes are fed into, by file index."""
    seen = SeenIds() if check_ids else None
    for file_no, path in enumerate(paths):
        if file_no in skip:
            continue
        number = 0
        for read in _read_file(path, (digests or {}).get(file_no), blocks):
            if isinstance(read, _Block):
                first, number = read.scan.first, read.scan.first + len(read.scan) - 1
                if seen is not None:  # (file, record) in an int
                    places = file_no << 40 | np.arange(first, number + 1, dtype=np.int64)
                    repeat = seen.add_many(read.scan.ids(), places)
                    if repeat is not None:
                        raise duplicate(paths, *repeat)
            else:
                number = read.number
                if seen is not None:
                    repeat = seen.add(read.record.id, file_no << 40 | number)
                    if repeat is not None:
                        raise duplicate(paths, *repeat)
            yield file_no, read
        if number == 0:
            raise InputError(f"{display(path)}: no sequence records found")
    repeat = seen.flush() if seen is not None else None
    if repeat is not None:
        raise duplicate(paths, *repeat)


def _regular_sizes(paths: Sequence[str]) -> list[int | None]:
    """Size on disk of each input; None for stdin and special files (a pipe has no size)."""
    sizes: list[int | None] = []
    for path in paths:
        try:
            info = None if path == "-" else os.stat(path)
        except OSError as exc:  # gone since check_inputs
            raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None
        sizes.append(info.st_size if info is not None and stat.S_ISREG(info.st_mode) else None)
    return sizes


def _count_rna(stats: ReadStats, path: str, number: int, rid: str, count: int = 1) -> None:
    """Count `count` RNA records from record `number`; the first of a run is logged, naming
    the file and the record."""
    if stats.rna_records == 0:
        log.info("%s: record %d (%r) is RNA: reading U as T and u as t (and in any later RNA "
                 "record)", display(path), number, rid)
    stats.rna_records += count


def _read_file(source: str, digest: Any = None,
               blocks: bool = False) -> Iterator[_Read | _Block]:
    """Open one input, detect compression and format, and yield its checked records (or,
    with `blocks`, blocks of them wherever `blocks.scan` takes them); `digest` (a hashlib
    object) is fed every raw byte of the file."""
    path = display(source)
    file = raw = _open_raw(source)
    regular = source != "-" and stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
    hashing = None if digest is None else _Hashing(file, digest)
    if hashing is not None:
        raw = io.BufferedReader(hashing, _BLOCK)
    try:
        stream = io.BufferedReader(xopen.xopen(raw, "rb", threads=0), _BLOCK)
        fasta = _is_fasta(path, stream)
        before, rest = _NOTHING_BEFORE, None
        if blocks:
            scanned = Blocks(stream, fasta, source)
            for block in scanned:
                # The position in the raw file under the decompressor: bytes consumed.
                yield _Block(block, raw.tell() if regular else None)
            # What `scan` does not take, the parser reads record by record.
            rest = scanned.rest()
            before = _Before(scanned.records, scanned.lines, scanned.last_id())
        if not blocks or rest is not None:
            records = _parse(rest if blocks else stream, fasta, path, source, before)
            for number, (record, rna) in enumerate(records, before.records + 1):
                # tell() is a system call: asked on a file's first record and every 256th.
                at = raw.tell() if regular and (number == 1 or not number & 255) else None
                yield _Read(number, record, rna, at)
        if hashing is not None:
            hashing.drain()  # bytes a decompressor left unread count too
    except _DECOMPRESS_ERRORS as exc:
        raise InputError(
            f"{path}: cannot read: {one_line(exc)} (truncated or corrupt file?)"
        ) from None
    finally:
        file.close()  # stdin too: '-' is read once, and dnaio's text wrapper closes it anyway


class _Hashing(io.RawIOBase):
    """A raw file that feeds every byte read through it into a hash."""

    def __init__(self, raw: BinaryIO, digest: Any) -> None:
        self._raw, self._digest, self._pos = raw, digest, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._digest.update(memoryview(buffer)[:n])
            self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def fileno(self) -> int:
        return self._raw.fileno()

    def drain(self) -> None:
        """Hash the rest of the file (the parser closed this wrapper, not the file)."""
        while block := self._raw.read(_BLOCK):
            self._digest.update(block)


def _open_raw(path: str) -> BinaryIO:
    if path == "-":
        return getattr(sys.stdin, "buffer", sys.stdin)
    try:
        # Opened by descriptor so that the stream has no file name: xopen then detects the
        # compression from the magic bytes instead of the extension.
        return open(os.open(path, os.O_RDONLY), "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _is_fasta(path: str, stream: io.BufferedReader) -> bool:
    """Whether the content is FASTA (True) or FASTQ (False), from its first non-blank byte."""
    head = stream.peek(1)  # leaves the bytes in the stream
    while head and not head.strip():
        stream.read(len(head))  # a whole buffer of blank space: drop it
        head = stream.peek(1)
    first = head.lstrip()[:1]
    if first in (b">", b"@"):
        return first == b">"
    if not first:
        raise InputError(f"{path}: empty file (no sequence records)")
    kind = "binary file" if looks_binary(head) else f"starts with {first.decode('latin-1')!r}"
    raise InputError(f"{path}: not a FASTA or FASTQ file ({kind})")


def _parse(stream: BinaryIO, fasta: bool, path: str, source: str,
           before: _Before = _NOTHING_BEFORE) -> Iterator[tuple[Record, bool]]:
    """Yield the checked records of a decompressed FASTA or FASTQ stream (that starts after
    what `before` says, for numbers in messages)."""
    number, rec = before.records, None  # records read so far, and the last one
    try:
        if fasta:
            reader = dnaio.FastaReader(stream, sequence_class=_Fasta)
        else:
            reader = dnaio.FastqReader(stream, buffer_size=_BLOCK)
        for number, rec in enumerate(reader, before.records + 1):
            yield _record(rec.name, rec.sequence, fasta, source, path, number)
    except dnaio.exceptions.FileFormatError as exc:  # carries the line number
        if not fasta:
            line = None if exc.line is None else exc.line + before.lines
            raise InputError(fastq_error(path, exc.message, line, number + 1,
                                          rec.name if rec is not None else before.name)) \
                from None
        raise InputError(f"{path}: invalid FASTA in record {number + 1} or later: "
                         f"{one_line(exc)}") from None
    except UnicodeDecodeError as exc:  # dnaio decodes FASTA as text, a block at a time
        raise InputError(f"{path}: not UTF-8 text in record {number + 1} or later (byte "
                         f"0x{exc.object[exc.start]:02x}; binary file?)") from None


def _record(header: str, seq: str, fasta: bool, source: str, path: str,
            number: int) -> tuple[Record, bool]:
    """Check record `number` of `path` as parsed by dnaio; RNA is read as DNA.

    Returns the record and whether it had a U or u."""
    # Kept as in the input (viral.fna repeats it), leading blanks too; only a CR is dropped.
    header = header.rstrip("\r\n")
    words = header.split(maxsplit=1)
    if not words:
        raise InputError(f"{path}: record {number}: record with an empty header")
    # Fast path without a per-character Python loop: ASCII and nothing outside the IUPAC codes.
    if not seq.isascii() or seq.encode("ascii").translate(None, _VALID):
        if fasta:
            seq = _BLANKS.sub("", seq)
        bad = _INVALID.search(seq)
        if bad:
            raise InputError(f"{path}: record {number} ({words[0]!r}): invalid character "
                             f"{bad.group()!r} (not an IUPAC nucleotide code; is this protein?)")
    rna = "U" in seq or "u" in seq
    if rna:  # SPEC §1; the original dropped every codon with a U
        seq = seq.translate(_RNA_TO_DNA)
    return Record(id=words[0], header=header, seq=seq, source=source), rna


