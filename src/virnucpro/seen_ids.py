"""The record ids a read has seen, to find a repeated id among millions of records."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK = (1 << 64) - 1


class SeenIds:
    """The record ids seen so far, in 16 bytes each: a 64-bit hash and where it was first seen.

    This is the one thing the reader keeps per record. Millions of Python strings would cost
    ~100+ bytes each and pin the interpreter's memory arenas; sorted numpy arrays, joined by a
    batch of recent ids at a time, do not. A repeat of a recent id added alone (`add`) is
    found at once; any other when the batch joins the arrays (one vectorised search per
    batch, not one per record), so it may be reported up to a batch later, naming both
    records all the same. The hash is Python's own (`hash`), the same for an ASCII id as str
    or bytes, so ids a block scan gives as bytes (`add_many`) meet ids parsed one by one. Two
    different ids with the same 64-bit hash would be reported as a duplicate: about a
    one-in-10^6 chance over 10^7 records.
    """

    _RECENT = 1 << 16  # recent ids kept aside before they join the sorted arrays
    _MOST = 1 << 18  # ... and at most this many, however many are in the arrays

    def __init__(self) -> None:
        self._hashes = np.empty(0, np.uint64)
        self._places = np.empty(0, np.int64)
        self._recent: dict[int, tuple[int, str]] = {}  # added alone
        self._batches: list[tuple[np.ndarray, np.ndarray, Sequence[str | bytes]]] = []
        self._waiting = 0  # ids in `_recent` and `_batches`

    def add(self, rid: str, place: int) -> tuple[int, int, str] | None:
        """Record `rid` at `place`; a repeat found now, of this id or of a recent one, as
        (where it was first seen, where it was repeated, the id)."""
        key = hash(rid) & _MASK
        first = self._recent.get(key)
        if first is not None:
            return first[0], place, rid
        self._recent[key] = (place, rid)
        return self._grown(1)

    def add_many(self, ids: Sequence[str | bytes], places: np.ndarray,
                 ) -> tuple[int, int, str] | None:
        """Record the ids of a block (ASCII bytes, or str) at `places`; a repeat found now,
        as `add` reports it."""
        keys = np.fromiter(map(hash, ids), np.int64, len(ids)).view(np.uint64)
        self._batches.append((keys, np.asarray(places, np.int64), ids))
        return self._grown(len(ids))

    def _grown(self, n: int) -> tuple[int, int, str] | None:
        self._waiting += n
        if self._waiting >= min(self._MOST, max(self._RECENT, len(self._hashes) >> 3)):
            return self.flush()
        return None

    def flush(self) -> tuple[int, int, str] | None:
        """Move the waiting ids into the sorted arrays; of the repeats among them (of an
        older id, or of one another), the earliest repeat, as `add` reports it."""
        if not self._waiting:
            return None
        recent = list(self._recent.values())
        keys = np.concatenate([np.fromiter(self._recent, np.uint64, len(recent)),
                               *(k for k, _, _ in self._batches)])
        places = np.concatenate([np.fromiter((p for p, _ in recent), np.int64, len(recent)),
                                 *(p for _, p, _ in self._batches)])
        ids = [r for _, r in recent] + [i for _, _, b in self._batches for i in b]
        found = _repeats(keys, places, self._hashes, self._places)
        if found is not None:
            first, j = found
            rid = ids[j]
            return first, int(places[j]), rid.decode() if isinstance(rid, bytes) else rid
        merged = np.concatenate([self._hashes, keys])
        order = np.argsort(merged, kind="stable")
        self._hashes = merged[order]
        self._places = np.concatenate([self._places, places])[order]
        self._recent, self._batches, self._waiting = {}, [], 0
        return None


def _repeats(keys: np.ndarray, places: np.ndarray, old_keys: np.ndarray,
             old_places: np.ndarray) -> tuple[int, int] | None:
    """The earliest repeat among new ids (keys at places), of an old one or of one another:
    (where its id was first seen, its index in `keys`); None when there is none."""
    best: tuple[int, int] | None = None  # (first place, index)
    if len(old_keys):
        at = np.minimum(np.searchsorted(old_keys, keys), len(old_keys) - 1)
        hits = np.flatnonzero(old_keys[at] == keys)
        if hits.size:
            j = int(hits[np.argmin(places[hits])])
            best = (int(old_places[at[j]]), j)
    order = np.lexsort((places, keys))  # by key, then place
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if same.size:
        # The second of a key's places is its earliest repeat; the first is where it was seen.
        k = same[np.argmin(places[order][same + 1])]
        j = int(order[k + 1])
        if best is None or places[j] < places[best[1]]:
            best = (int(places[order[k]]), j)
    return best
