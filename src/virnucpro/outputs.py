"""Every output file: its name, its columns and its layout, and how it is written.

This is the one module that names output paths. Files are written under a temporary name in
their final directory and renamed into place only when the whole run succeeded, so a failed or
interrupted run never leaves a partial file behind an expected name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from virnucpro.errors import OutputError

__all__ = [
    "FASTA_WIDTH",
    "SKIPPED_COLUMNS",
    "AtomicWriter",
    "TranslateOutputs",
    "atomic_write",
    "check_writable",
    "fasta_line",
    "fasta_wrapped",
    "make_output_dir",
    "translate_outputs",
    "tsv_row",
]

FASTA_WIDTH = 60  # Biopython's SeqIO FASTA writer wraps at 60, and the chunked file is its output
# `<stem>_skipped.tsv`: one row per sequence or chunk that yields no kept frame.
SKIPPED_COLUMNS = ("id", "kind", "reason")  # kind: sequence|chunk; reason: frames.SKIP_*


# ---------------------------------------------------------------------------- file names
@dataclass(frozen=True, slots=True)
class TranslateOutputs:
    """The files `virnucpro translate` writes for one input."""

    chunked: Path  # <stem>_chunked<L>.fa: the chunks, FASTA wrapped at 60 (as the original)
    nucleotide: Path  # <stem>_identified_nucleotide.fa: kept frames' DNA, one line each
    protein: Path  # <stem>_identified_protein.faa: kept frames' proteins, one line each
    skipped: Path  # <stem>_skipped.tsv: SKIPPED_COLUMNS

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.chunked, self.nucleotide, self.protein, self.skipped)


def translate_outputs(out_dir: Path, stem: str, chunk_size: int) -> TranslateOutputs:
    """Output paths for one input; the first three are named as the original names them."""
    return TranslateOutputs(
        chunked=out_dir / f"{stem}_chunked{chunk_size}.fa",
        nucleotide=out_dir / f"{stem}_identified_nucleotide.fa",
        protein=out_dir / f"{stem}_identified_protein.faa",
        skipped=out_dir / f"{stem}_skipped.tsv",
    )


# -------------------------------------------------------------------------------- layout
def fasta_wrapped(name: str, seq: str, width: int = FASTA_WIDTH) -> str:
    """A FASTA record as Biopython writes it: sequence lines of `width`, final newline."""
    lines = [seq[i: i + width] for i in range(0, len(seq), width)]
    return f">{name}\n" + "".join(line + "\n" for line in lines)


def fasta_line(name: str, seq: str) -> str:
    """A FASTA record with the whole sequence on one line (the identified files)."""
    return f">{name}\n{seq}\n"


def tsv_row(values: Iterable[object]) -> str:
    """One tab-separated line."""
    return "\t".join(map(str, values)) + "\n"


# ------------------------------------------------------------------------------- writing
def make_output_dir(out_dir: Path) -> None:
    """Create the output directory (and parents) if missing."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{out_dir}: exists and is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create directory: {exc.strerror or exc}") from None


def check_writable(paths: Sequence[Path], force: bool) -> None:
    """Refuse to overwrite existing outputs unless `force`; refuse directories always."""
    for path in paths:
        if path.is_dir():
            raise OutputError(f"{path}: is a directory; cannot write an output file there")
        if path.exists() and not force:
            raise OutputError(f"{path}: already exists (use --force to overwrite)")
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: cannot write in {parent} (permission denied)")


class AtomicWriter:
    """Opens files under temporary names beside their final path; `commit()` renames them all
    into place, `discard()` deletes them. As a context manager it commits on success and
    discards on error."""

    def __init__(self) -> None:
        self._files: list[tuple[Path, Path, TextIO]] = []

    def open(self, path: Path) -> TextIO:
        """A text handle (UTF-8, '\\n' line ends) for what will become `path`."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # os.open with 0o666 lets the umask decide the final permissions, as open() would.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        handle = open(fd, "w", encoding="utf-8", newline="\n", buffering=1 << 20)  # noqa: SIM115
        self._files.append((path, tmp, handle))
        return handle

    def commit(self) -> None:
        """Close every file and move it to its final name."""
        while self._files:
            path, tmp, handle = self._files[0]
            try:
                handle.close()
                os.replace(tmp, path)
            except OSError as exc:
                self.discard()
                raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
            self._files.pop(0)

    def discard(self) -> None:
        """Close and delete every file not yet committed."""
        for _, tmp, handle in self._files:
            with contextlib.suppress(OSError):
                handle.close()
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._files = []

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[TextIO]:
    """Write one file atomically: `with atomic_write(p) as fh: fh.write(...)`."""
    with AtomicWriter() as writer:
        yield writer.open(path)
