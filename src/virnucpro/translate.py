"""Orchestration: each command's stages, from reading inputs to writing outputs."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import InputError, OutputError
from virnucpro.files import AtomicWriter
from virnucpro.frames import RecordFrames, iter_record_frames
from virnucpro.outputs import (
    SKIPPED_COLUMNS,
    TranslateOutputs,
    check_writable,
    fasta_line,
    fasta_wrapped,
    make_output_dir,
    translate_outputs,
    tsv_row,
)
from virnucpro.reader import check_inputs, input_stem, read_records

__all__ = ["TranslateSummary", "run_translate"]


@dataclass(frozen=True, slots=True)
class TranslateSummary:
    """What `run_translate` did, for the one-line report."""

    sequences: int
    chunks: int
    frames: int
    skipped: int
    outputs: tuple[TranslateOutputs, ...]


def run_translate(inputs: Sequence[str], out_dir: Path, *, chunk_size: int,
                  force: bool) -> TranslateSummary:
    """Chunk and translate each input into its own files in `out_dir` (see outputs.py).

    Inputs are streamed; record ids must be unique across all inputs. Nothing is written
    unless every input is read without error."""
    if chunk_size < 1:
        raise InputError(f"chunk size must be at least 1, got {chunk_size}")
    check_inputs(inputs)
    outputs = [translate_outputs(out_dir, stem, chunk_size) for stem in _unique_stems(inputs)]
    check_writable([path for out in outputs for path in out.paths], force)
    make_output_dir(out_dir)
    results = iter_record_frames(read_records(inputs), chunk_size)
    by_input = itertools.groupby(results, key=lambda rf: rf.record.source)
    totals = [0, 0, 0, 0]
    with AtomicWriter() as writer:
        for out, (_, group) in zip(outputs, by_input, strict=True):
            counts = _write_translation(group, out, writer)
            totals = [a + b for a, b in zip(totals, counts, strict=True)]
    return TranslateSummary(*totals, outputs=tuple(outputs))


def _unique_stems(inputs: Sequence[str]) -> list[str]:
    """Output names come from input stems, so two inputs must not share one."""
    stems: dict[str, str] = {}
    for path in inputs:
        stem = input_stem(path)
        if stem in stems:
            raise InputError(
                f"{path}: same output name {stem!r} as {stems[stem]}; rename one of them"
            )
        stems[stem] = path
    return list(stems)


def _write_translation(group: Iterable[RecordFrames], out: TranslateOutputs,
                       writer: AtomicWriter) -> tuple[int, int, int, int]:
    """Write one input's four files; return (sequences, chunks, frames, skipped)."""
    sequences = chunks = frames = skipped = 0
    try:
        chunked, nucleotide, protein, skips = (writer.open(path) for path in out.paths)
        skips.write(tsv_row(SKIPPED_COLUMNS))
        for rf in group:
            sequences += 1
            chunks += len(rf.chunks)
            chunked.write("".join(fasta_wrapped(chunk.id, chunk.seq) for chunk in rf.chunks))
            for chunk_frames in rf.frames:
                for frame in chunk_frames:
                    nucleotide.write(fasta_line(frame.id, frame.nucleotide))
                    protein.write(fasta_line(frame.id, frame.protein))
                frames += len(chunk_frames)
            for skip in rf.skipped:
                skips.write(tsv_row((skip.id, skip.kind, skip.reason)))
            skipped += len(rf.skipped)
        for handle in (chunked, nucleotide, protein, skips):
            handle.close()
    except OSError as exc:
        raise OutputError(f"{out.chunked.parent}: cannot write: {exc.strerror or exc}") from None
    return sequences, chunks, frames, skipped
