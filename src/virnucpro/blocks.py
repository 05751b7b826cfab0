"""Whole blocks of FASTA/FASTQ records, scanned with numpy instead of record by record.

A run's parent reads every input twice (the input check, then the run) and must stay light
enough for one core to feed many GPUs, so it does not parse records one at a time: `Blocks`
cuts the decompressed text into blocks of whole records (about 256 KiB; a longer record and
less than one read after it) and `scan` finds each block's records, their lengths, and the
ones with a U or u, with a few vectorised passes. The workers parse the records of the blocks
they are sent (`reader.parse_text`); a record the parent cuts into parts is made from its
block's bytes (`Scan.plain_record`).

`scan` only takes plain blocks: ASCII text whose records have an id right after the '>' or '@'
and only IUPAC codes (and, in FASTA, blanks) in their sequence lines; FASTQ records of four
lines with a bare '+' line and no CR. A block it cannot take (any mistake in the input, and
some rare but valid layouts) ends the blocks of that file: `Blocks.rest` then gives the bytes
from that block on to the record-by-record parser, which reads valid input the same way and
names the file, the record and the mistake in any other.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

BLOCK = 1 << 18  # bytes read at a time; a block holds at least one whole record
IUPAC = b"ACGTURYSWKMBDHVNacgturyswkmbdhvn-"  # as reader._VALID
_BLANKS = b" \t\r\x0b\x0c"  # dropped from FASTA sequence lines (dnaio drops the CR)
_SPACE = np.array([10, 13, 32, 9, 11, 12], np.uint8)  # ends a record id
_ENDS_AN_ID = bytes.maketrans(bytes(_SPACE[1:]), b"\n" * (len(_SPACE) - 1))
_SEPARATORS = (b"\x1c", b"\x1d", b"\x1e", b"\x1f")  # whitespace to str.split, not to bytes
_TO_DNA = bytes.maketrans(b"Uu", b"Tt")  # RNA is read as DNA (reader.py)


@dataclass(frozen=True, slots=True)
class Scan:
    """The whole records of one block, as in the input (plus a final newline if the file
    lacked one)."""

    data: bytes
    fasta: bool
    starts: np.ndarray  # int64 [n + 1]: where each record starts in `data`; len(data) last
    lengths: np.ndarray  # int64 [n]: bases of each record (blanks and line ends aside)
    rna: np.ndarray  # indexes of the records with a U or u (read as T or t)
    heads: np.ndarray  # int64 [n]: where each header line ends ('\n')
    first: int  # number of its first record in the file, from 1
    source: str  # the file, as given ('-': stdin)

    def __len__(self) -> int:
        return len(self.lengths)

    def ids(self) -> list[bytes]:
        """Each record's id: its header's first word."""
        # Every byte that ends an id, as a line end: an id ends at the first one after its
        # start (at the latest its header's own line end).
        a = np.frombuffer(self.data.translate(_ENDS_AN_ID), np.uint8)
        stops = np.flatnonzero(a == 10)
        begin = self.starts[:-1] + 1
        end = stops[np.searchsorted(stops, begin)]
        return [self.data[s:e] for s, e in zip(begin.tolist(), end.tolist(), strict=True)]

    def plain_record(self, i: int) -> tuple[str, str]:
        """Record `i`'s header and sequence as the record parser gives them (`reader.parse_text`:
        a FASTA header without its trailing blanks, line ends and blanks out of the sequence,
        U as T), made with a few bytes operations instead of a string per line: what a long
        record costs the parent."""
        start, head, stop = int(self.starts[i]), int(self.heads[i]), int(self.starts[i + 1])
        header = self.data[start + 1:head]
        if self.fasta:
            header = header.rstrip(_BLANKS)
        else:  # a FASTQ record's sequence is its second line
            stop = self.data.index(b"\n", head + 1)
        seq = self.data[head + 1:stop].translate(_TO_DNA, b"\n" + _BLANKS)
        return header.decode("ascii"), seq.decode("ascii")


def scan(data: bytes, fasta: bool, first: int = 1, source: str = "") -> Scan | None:
    """The records of `data` (whole records, ending with a newline), or None when the block
    is not one `scan` takes (see the module note)."""
    if not data.isascii() or any(c in data for c in _SEPARATORS):
        return None
    a = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(a == 10)
    lines = np.empty_like(ends)
    lines[0], lines[1:] = 0, ends[:-1] + 1
    found = _fasta(data, a, lines, ends) if fasta else _fastq(data, a, lines, ends)
    if found is None:
        return None
    starts, heads, regions, seq = found
    if np.isin(a[starts[:-1] + 1], _SPACE).any():
        return None  # no id after the '>' or '@': the parser names the record
    sizes = regions[1] - regions[0]
    lengths = sizes - _line_ends_within(ends, regions)
    blanks = seq.translate(None, IUPAC + b"\n")
    if blanks:
        if blanks.translate(None, _BLANKS if fasta else b""):
            return None  # a character no sequence may hold: the parser names it
        lengths = lengths - _per_region(seq, sizes, _BLANKS)
    rna = (np.unique(_per_region_hits(seq, sizes, b"Uu")) if (b"U" in seq or b"u" in seq)
           else np.empty(0, np.int64))
    return Scan(data, fasta, starts, lengths, rna, heads, first, source)


def _line_ends_within(ends: np.ndarray, regions: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """How many line ends ('\n') lie in each region [begin, end)."""
    return np.searchsorted(ends, regions[1]) - np.searchsorted(ends, regions[0])


def _fasta(data: bytes, a: np.ndarray, lines: np.ndarray, ends: np.ndarray) -> tuple | None:
    """Record starts, header ends, sequence regions and their bytes, of a FASTA block."""
    head = np.flatnonzero(a[lines] == 62)  # the header lines ('>')
    if not len(head) or head[0] != 0:
        return None
    starts = np.append(lines[head], len(data))
    heads = ends[head]
    if b"\r" in data:  # the parser ends a line at a CR: one inside a header is left to it
        cr = np.flatnonzero(a == 13)
        k = np.minimum(np.searchsorted(heads, cr), len(heads) - 1)
        if ((cr >= starts[k]) & (cr < heads[k] - 1)).any():
            return None
    regions = (heads + 1, starts[1:])
    return starts, heads, regions, _joined(data, regions)


def _fastq(data: bytes, a: np.ndarray, lines: np.ndarray, ends: np.ndarray) -> tuple | None:
    """The same for a FASTQ block: records of four lines, '@' header, bare '+' line, as many
    qualities as bases, no CR."""
    if len(ends) % 4 or b"\r" in data:
        return None
    head, seq_at, plus, qual = lines[0::4], lines[1::4], lines[2::4], lines[3::4]
    seq_end, qual_end = ends[1::4], ends[3::4]
    if not ((a[head] == 64).all() and (a[plus] == 43).all() and (ends[2::4] == plus + 1).all()
            and (seq_end - seq_at == qual_end - qual).all()):
        return None
    regions = (seq_at, seq_end + 1)  # the sequence line and its line end
    seq = _joined(data, regions)
    if seq.translate(None, IUPAC + b"\n"):
        return None  # blanks too: FASTQ sequences may not hold them
    return np.append(head, len(data)), ends[0::4], regions, seq


def _joined(data: bytes, regions: tuple[np.ndarray, np.ndarray]) -> bytes:
    """The bytes of the regions [begin, end) of `data`, joined (no Python loop per region)."""
    return b"".join(map(data.__getitem__, map(slice, regions[0].tolist(),
                                              regions[1].tolist())))


def _per_region_hits(seq: bytes, sizes: np.ndarray, chars: bytes) -> np.ndarray:
    """For each byte of `chars` in `seq` (the regions' bytes, joined), its region's index."""
    s = np.frombuffer(seq, np.uint8)
    hits = np.flatnonzero(np.isin(s, np.frombuffer(chars, np.uint8)))
    return np.searchsorted(np.cumsum(sizes), hits, side="right")


def _per_region(seq: bytes, sizes: np.ndarray, chars: bytes) -> np.ndarray:
    """How many bytes of `chars` each region holds."""
    return np.bincount(_per_region_hits(seq, sizes, chars), minlength=len(sizes))


class Blocks:
    """The scanned blocks of one decompressed stream, until the first one `scan` does not
    take; then `rest` is the stream from that block on, and `records` and `lines` say how
    many records and lines came before it."""

    def __init__(self, stream: BinaryIO, fasta: bool, source: str = "",
                 size: int = BLOCK) -> None:
        self.stream, self.fasta, self.source, self.size = stream, fasta, source, size
        self.records = self.lines = 0
        self._last: Scan | None = None
        self._left = b""  # read, not yet scanned
        self._done = False  # the stream was read to its end
        self._added = False  # a newline was added to the file's last line

    def __iter__(self) -> Iterator[Scan]:
        while not self._done:
            data = self._next_block()
            if data is None:
                return
            block = scan(data, self.fasta, self.records + 1, self.source)
            if block is None:  # from here on, the parser's
                self._left = (data[:-1] if self._added else data) + self._left
                return
            self.records += len(block)
            self.lines += data.count(b"\n")
            self._last = block
            yield block

    def last_id(self) -> str | None:
        """The id of the last record scanned (None: none was)."""
        return None if self._last is None else self._last.ids()[-1].decode()

    def rest(self) -> BinaryIO | None:
        """What is left to parse record by record (None: nothing)."""
        if self._done and not self._left:
            return None
        return io.BufferedReader(_Chained(self._left, self.stream), BLOCK)  # type: ignore[arg-type]

    def _next_block(self) -> bytes | None:
        """The next whole records; None at the end (or when the text is not as expected).

        Reads `size` bytes at a time and cuts after the last whole record of the newest
        piece, so a block overshoots its records by less than one piece, whatever their
        lengths (a record longer than a piece is read in many; nothing is joined twice)."""
        parts = [self._left]
        lines = 0 if self.fasta else self._left.count(b"\n")  # FASTQ cuts after a 4k-th line
        while True:
            more = self.stream.read(self.size)
            if not more:  # the end of the stream: whatever is left is whole records
                buf = b"".join(parts)
                self._done, self._left = True, b""
                if not buf:
                    return None
                self._added = not buf.endswith(b"\n")
                return buf + b"\n" if self._added else buf
            if self.fasta:
                cut = _fasta_cut(parts[-1][-1:], more)
            else:
                before, lines = lines, lines + more.count(b"\n")
                cut = _fastq_cut(more, lines) if lines // 4 > before // 4 else None
            if cut is not None:
                parts.append(more[:cut])
                self._left = more[cut:]
                return b"".join(parts)
            parts.append(more)


def _fasta_cut(last: bytes, more: bytes) -> int | None:
    """Where the last record that starts in `more` starts (None: none does); `last`: the
    byte read before `more`, for a record that starts `more`."""
    cut = more.rfind(b"\n>")
    if cut >= 0:
        return cut + 1
    return 0 if last == b"\n" and more.startswith(b">") else None


def _fastq_cut(more: bytes, lines: int) -> int:
    """Where the last whole FASTQ record ends in `more` (the 4k-th line end of what was
    read; `lines`: the line ends read so far, `more`'s included)."""
    cut = len(more)
    for _ in range(lines % 4 + 1):  # back over the lines of an unfinished record
        cut = more.rfind(b"\n", 0, cut)
    return cut + 1


class _Chained(io.RawIOBase):
    """Bytes already read, then the rest of a stream."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self._head, self._tail = memoryview(head), tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._tail.readinto(buffer)  # type: ignore[attr-defined]
