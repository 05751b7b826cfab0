"""Work units and token-budget batches: how frames are grouped before they reach a model.

A *work unit* is a run of whole input records whose frames are scored together; it is the
unit of scheduling, of resume and of memory. Inside a unit, frames are sorted by length and
cut into batches whose padded size (rows x longest row) stays within a token budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from virnucpro.frames import RecordFrames


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """What a worker needs to score one unit: plain strings, cheap to pickle."""

    index: int
    frame_ids: tuple[str, ...]
    nucleotides: tuple[str, ...]
    proteins: tuple[str, ...]

    @property
    def n_frames(self) -> int:
        return len(self.frame_ids)

    @property
    def work(self) -> int:
        """What the progress display counts: frames."""
        return self.n_frames

    @property
    def cost(self) -> int:
        """Residues + bases: a proxy for compute, used to size units."""
        return sum(map(len, self.proteins)) + sum(map(len, self.nucleotides))


def _unit(index: int, group: Sequence[RecordFrames]) -> WorkUnit:
    frames = [f for rf in group for chunk_frames in rf.frames for f in chunk_frames]
    return WorkUnit(
        index=index,
        frame_ids=tuple(f.id for f in frames),
        nucleotides=tuple(f.nucleotide for f in frames),
        proteins=tuple(f.protein for f in frames),
    )


def iter_units(
    records: Iterable[RecordFrames], max_frames: int
) -> Iterator[tuple[WorkUnit, list[RecordFrames]]]:
    """Group consecutive records into units of about `max_frames` frames.

    Records are never split, so a unit may exceed `max_frames` when one record alone does.
    The grouping depends only on the input and `max_frames`, so a rerun rebuilds the same
    units (this is what resume relies on). Yields each unit with the records it covers.
    """
    group: list[RecordFrames] = []
    n = 0
    index = 0
    for rf in records:
        group.append(rf)
        n += sum(len(f) for f in rf.frames)
        if n >= max_frames:
            yield _unit(index, group), group
            index += 1
            group, n = [], 0
    if group:
        yield _unit(index, group), group


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Cut item indices into batches with rows x longest-row <= `budget`.

    Items are taken longest first, so the biggest batch comes first (an out-of-memory error
    shows up at once) and rows in a batch have similar lengths (little padding). An item
    longer than the budget gets a batch of its own.
    """
    if budget < 1:
        raise ValueError(f"token budget must be positive, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # `order` is descending, so the first row of a batch is its longest.
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
