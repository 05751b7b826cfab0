"""Streaming FASTA/FASTQ reader with validation.

Compression (gzip, bzip2, xz) and format (FASTA or FASTQ) are detected from the content, never
from the file name. FASTA is parsed here in large blocks (fast, and we know line numbers for
messages); FASTQ is parsed by dnaio. Only one record (plus one read block) is held at a time.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dnaio
import xopen

from virnucpro.errors import InputError

__all__ = ["Record", "check_inputs", "input_stem", "read_records"]

_BLOCK = 1 << 20
# IUPAC nucleotide codes in either case, plus '-' (gap). Anything else is rejected.
_VALID = b"ACGTURYSWKMBDHVNacgturyswkmbdhvn-"
_WHITESPACE = b" \t\r\n\x0b\x0c"
_BAD_BYTE = re.compile(b"[^" + re.escape(_VALID + _WHITESPACE) + b"]")
# First bytes of the compressed formats we open (the format named as xopen spells it).
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
# What the decompressors (gzip, isal, zlib-ng, bz2, lzma) raise on truncated or corrupt data.
_DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error,
                                                       lzma.LZMAError)
try:
    from isal.isal_zlib import error as _IsalError

    _DECOMPRESS_ERRORS += (_IsalError,)
except ImportError:  # pragma: no cover - isal is an optional accelerator of xopen
    pass
_COMPRESSED_SUFFIXES = (".gz", ".bgz", ".bz2", ".xz", ".zst")
_SEQUENCE_SUFFIXES = (".fasta", ".fas", ".fa", ".fna", ".ffn", ".frn", ".fsa", ".seq",
                      ".fastq", ".fq")


@dataclass(frozen=True, slots=True)
class Record:
    """One input sequence."""

    id: str  # first whitespace-separated word of the header
    header: str  # full header line without '>' / '@'
    seq: str  # as in the input (case kept), no whitespace
    source: str  # the path as given ('-' for stdin), for messages


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


def read_records(paths: Sequence[str]) -> Iterator[Record]:
    """Yield the records of all `paths` in input order; ids must be unique across all."""
    check_inputs(paths)
    # id -> packed (file number, position) of its first occurrence. This is the one thing that
    # grows with the input (one small entry per record); it names both places of a duplicate.
    seen: dict[str, int] = {}
    for file_no, path in enumerate(paths):
        count = 0
        for record, where in _read_file(path):
            place = _pack(file_no, where)
            first = seen.setdefault(record.id, place)
            if first != place:
                first_no, first_where = _unpack(first)
                raise InputError(
                    f"{_display(path)}: {_where(where)}: duplicate record id {record.id!r} "
                    f"(first seen in {_display(paths[first_no])}, {_where(first_where)})"
                )
            count += 1
            yield record
        if count == 0:
            raise InputError(f"{_display(path)}: no sequence records found")


# A position is a FASTA line number (> 0) or minus a FASTQ record number (< 0).
def _where(where: int) -> str:
    return f"line {where}" if where > 0 else f"record {-where}"


def _pack(file_no: int, where: int) -> int:
    return file_no << 42 | (where + (1 << 41))


def _unpack(place: int) -> tuple[int, int]:
    return place >> 42, (place & ((1 << 42) - 1)) - (1 << 41)


def _read_file(source: str) -> Iterator[tuple[Record, int]]:
    """Open one input, detect compression and format, and yield its records."""
    path = _display(source)
    raw = _open_raw(source)
    try:
        stream, fmt = _detect(path, raw)
        parse = _fasta_records if fmt == "fasta" else _fastq_records
        yield from parse(stream, path, source)
    except _DECOMPRESS_ERRORS as exc:
        raise InputError(
            f"{path}: cannot read: {_one_line(exc)} (truncated or corrupt file?)"
        ) from None
    finally:
        if raw is not _stdin():
            raw.close()


def _display(path: str) -> str:
    """How messages name an input."""
    return "stdin" if path == "-" else path


def _stdin() -> BinaryIO:
    return getattr(sys.stdin, "buffer", sys.stdin)


def _open_raw(path: str) -> BinaryIO:
    if path == "-":
        return _stdin()
    try:
        return open(path, "rb")  # closed by _read_file
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _detect(path: str, raw: BinaryIO) -> tuple[BinaryIO, str]:
    """Return a binary stream of the (decompressed) content and 'fasta' or 'fastq'."""
    head = _read_up_to(raw, 6)
    stream: BinaryIO = _Prefixed(head, raw)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            stream = xopen.xopen(io.BufferedReader(stream), "rb", format=fmt, threads=0)
            break
    else:
        if not head:
            raise InputError(f"{path}: empty file")
    head = b""
    while not head.strip():
        block = stream.read(_BLOCK)
        if not block:
            raise InputError(f"{path}: empty file (no sequence records)")
        head += block
    first = head.lstrip()[:1]
    stream = _Prefixed(head, stream)
    if first == b">":
        return stream, "fasta"
    if first == b"@":
        return stream, "fastq"
    kind = "binary file" if _looks_binary(head) else f"starts with {first.decode('latin-1')!r}"
    raise InputError(f"{path}: not a FASTA or FASTQ file ({kind})")


def _looks_binary(data: bytes) -> bool:
    sample = data[:4096]
    return b"\x00" in sample or sum(b > 126 or (b < 32 and b not in _WHITESPACE)
                                    for b in sample) > len(sample) // 10


def _read_up_to(fh: BinaryIO, n: int) -> bytes:
    """Read n bytes, or fewer at end of file (pipes may return short reads)."""
    data = b""
    while len(data) < n:
        more = fh.read(n - len(data))
        if not more:
            break
        data += more
    return data


class _Prefixed(io.RawIOBase):
    """A read-only stream that yields `prefix` and then the rest of `fh` (to undo a peek)."""

    def __init__(self, prefix: bytes, fh: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._fh.readinto(buffer)  # type: ignore[attr-defined]

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            n = len(self._prefix) if size < 0 else min(size, len(self._prefix))
            data = bytes(self._prefix[:n])
            self._prefix = self._prefix[n:]
            return data
        return self._fh.read(size)


def _fasta_records(stream: BinaryIO, path: str, source: str) -> Iterator[tuple[Record, int]]:
    """Split the stream at lines starting with '>' without a per-line Python loop."""
    parts: list[bytes] = []  # the record being assembled, which may span blocks
    line = 1  # line number where the assembled record starts
    last = b"\n"  # the byte before the current block
    while block := stream.read(_BLOCK):
        prev = 0
        for start in _record_starts(block, last):
            parts.append(block[prev:start])
            text = b"".join(parts)
            if text and not text.isspace():
                yield _fasta_record(text, path, source, line), line
            line += text.count(b"\n")
            parts, prev = [], start
        parts.append(block[prev:])
        last = block[-1:]
    text = b"".join(parts)
    if text and not text.isspace():
        yield _fasta_record(text, path, source, line), line


def _record_starts(block: bytes, last: bytes) -> list[int]:
    """Offsets in `block` of each '>' that begins a line."""
    starts = [0] if (last == b"\n" and block[:1] == b">") else []
    pos = block.find(b"\n>")
    while pos >= 0:
        starts.append(pos + 1)
        pos = block.find(b"\n>", pos + 1)
    return starts


def _fasta_record(text: bytes, path: str, source: str, line: int) -> Record:
    """Parse one '>header\\nSEQ...' block; `line` is the header's line number."""
    if text[:1] != b">":
        stripped = text.lstrip()
        line += text[: len(text) - len(stripped)].count(b"\n")
        text = stripped
    newline = text.find(b"\n")
    if newline < 0:
        newline = len(text)
    header_bytes = text[1:newline].strip()
    try:
        header = header_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: line {line}: header is not UTF-8 text (binary file?)") from None
    words = header.split(maxsplit=1)
    if not words:
        raise InputError(f"{path}: line {line}: record with an empty header")
    body = text[newline + 1:]
    seq = body.translate(None, _WHITESPACE)
    if seq.translate(None, _VALID):
        _raise_bad_character(path, line, words[0], body)
    return Record(id=words[0], header=header, seq=seq.decode("ascii"), source=source)


def _raise_bad_character(path: str, line: int, rid: str, body: bytes) -> None:
    match = _BAD_BYTE.search(body)
    assert match is not None
    line += 1 + body[: match.start()].count(b"\n")
    char = match.group().decode("latin-1")
    raise InputError(
        f"{path}: line {line}: record {rid!r}: invalid character {char!r} "
        "(not an IUPAC nucleotide code; is this a protein FASTA?)"
    )


def _fastq_records(stream: BinaryIO, path: str, source: str) -> Iterator[tuple[Record, int]]:
    try:
        reader = dnaio.FastqReader(io.BufferedReader(stream, _BLOCK), _close_file=False)
        for number, rec in enumerate(reader, 1):
            yield _fastq_record(rec.name, rec.sequence, path, source, number), -number
    except dnaio.exceptions.FileFormatError as exc:
        raise InputError(f"{path}: invalid FASTQ: {_one_line(exc)}") from None


def _fastq_record(header: str, seq: str, path: str, source: str, number: int) -> Record:
    words = header.split(maxsplit=1)
    if not words:
        raise InputError(f"{path}: record {number}: record with an empty header")
    raw = seq.encode("ascii")  # dnaio guarantees ASCII
    if raw.translate(None, _VALID):
        match = _BAD_BYTE.search(raw)
        char = match.group().decode("latin-1") if match else " "
        raise InputError(
            f"{path}: record {number}: record {words[0]!r}: invalid character {char!r} "
            "(not an IUPAC nucleotide code)"
        )
    return Record(id=words[0], header=header, seq=seq, source=source)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
