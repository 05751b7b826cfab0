"""The record ids a read has seen, to find a repeated id among millions of records."""

from __future__ import annotations

import hashlib

import numpy as np


class SeenIds:
    """The record ids seen so far, in 16 bytes each: a 64-bit hash and where it was first seen.

    This is the one thing the reader keeps per record. Millions of Python strings would cost
    ~100+ bytes each and pin the interpreter's memory arenas; sorted numpy arrays, joined by a
    batch of recent ids at a time, do not. A repeat inside the batch is found at once; one of
    an older id when the batch joins the arrays (one vectorised search per batch, not one per
    record), so it may be reported up to a batch later, naming both records all the same.
    Two different ids with the same 64-bit hash would be reported as a duplicate: about a
    one-in-10^6 chance over 10^7 records.
    """

    _RECENT = 1 << 16  # recent ids kept in a dict before they join the sorted arrays
    _MOST = 1 << 18  # ... and at most this many, however many are in the arrays

    def __init__(self) -> None:
        self._hashes = np.empty(0, np.uint64)
        self._places = np.empty(0, np.int64)
        self._recent: dict[int, tuple[int, str]] = {}

    def add(self, rid: str, place: int) -> tuple[int, int, str] | None:
        """Record `rid` at `place`; a repeat found now, of this id or of a recent one, as
        (where it was first seen, where it was repeated, the id)."""
        key = int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little")
        first = self._recent.get(key)
        if first is not None:
            return first[0], place, rid
        self._recent[key] = (place, rid)
        if len(self._recent) >= min(self._MOST, max(self._RECENT, len(self._hashes) >> 3)):
            return self.flush()
        return None

    def flush(self) -> tuple[int, int, str] | None:
        """Move the recent ids into the sorted arrays; the first of them that an older id
        repeats, as `add` reports it."""
        if not self._recent:
            return None
        keys = np.fromiter(self._recent, np.uint64, len(self._recent))
        recent = list(self._recent.values())
        places = np.fromiter((p for p, _ in recent), np.int64, len(recent))
        if len(self._hashes):
            at = np.minimum(np.searchsorted(self._hashes, keys), len(self._hashes) - 1)
            hits = np.flatnonzero(self._hashes[at] == keys)
            if hits.size:
                j = int(hits[np.argmin(places[hits])])
                return int(self._places[at[j]]), int(places[j]), recent[j][1]
        hashes = np.concatenate([self._hashes, keys])
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._places = np.concatenate([self._places, places])[order]
        self._recent = {}
        return None
