"""File chores, each done one way: atomic writes, strict JSON, sha256, external sorting.

Every file we write goes under a temporary name in its final directory and is renamed into
place only when complete, so an interrupted or failed write never leaves a partial file behind
an expected name. Operating-system errors become `OutputError`s naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import io
import json
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from virnucpro.errors import InputError, OutputError, VirnucproError

_HASH_BLOCK = 1 << 22


def os_error(path: Path | str, exc: OSError, doing: str = "cannot write") -> OutputError:
    """One line for an operating-system error on `path`, with what to do about it."""
    import errno

    hint = {errno.ENOSPC: "; free some space and run the same command again (it resumes)",
            errno.EDQUOT: "; free some space and run the same command again (it resumes)",
            errno.EROFS: "; the file system is read-only: choose another output directory",
            errno.EACCES: "; permission denied: choose another output directory",
            errno.EPERM: "; permission denied: choose another output directory"}
    return OutputError(f"{path}: {doing}: {exc.strerror or exc}{hint.get(exc.errno, '')}")


class AtomicWriter:
    """Opens files under temporary names beside their final path; `commit()` renames them all
    into place, `discard()` deletes them. As a context manager it commits on success and
    discards on error."""

    def __init__(self) -> None:
        self._files: list[tuple[Path, Path, TextIO]] = []

    def open(self, path: Path) -> TextIO:
        """A text handle (UTF-8, '\\n' line ends) for what will become `path`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            # os.open with 0o666 lets the umask decide the final permissions, as open() would.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise os_error(path, exc) from None
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
                raise os_error(path, exc) from None
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
    """Write one text file atomically: `with atomic_write(p) as fh: fh.write(...)`."""
    with AtomicWriter() as writer:
        handle = writer.open(path)
        try:
            yield handle
        except OSError as exc:
            raise os_error(path, exc) from None


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (a figure, an
    .npz); renamed to `path` when the block succeeds, deleted when it fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise os_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def dumps_json(data: object, *, indent: int | None = 2) -> str:
    """Strict JSON (a NaN or infinity is a bug, not a value): ValueError names the problem."""
    return json.dumps(data, indent=indent, allow_nan=False)


def write_json(path: Path, data: object) -> None:
    """Write strict JSON atomically (indented, keys in insertion order, final newline)."""
    text = dumps_json(data) + "\n"
    with atomic_write(path) as fh:
        fh.write(text)


def read_json(path: Path, *, error: type[VirnucproError] = VirnucproError,
              missing_ok: bool = False, hint: str = "") -> Any:
    """The JSON in `path`; None when it is missing and `missing_ok`. Anything unreadable
    raises `error` naming the path (plus `hint`, e.g. what to do)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise error(f"{path}: no such file{hint}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{path}: cannot read ({exc}){hint}") from None


def fingerprint(data: object) -> str:
    """sha256 of the canonical JSON of `data`: the identity of a run or a cache."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def sha256_file(path: Path, advance: Callable[[int], Any] | None = None) -> str:
    """sha256 of a file's bytes; `advance(n)` is told of every block read (a progress bar)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
            if advance is not None:
                advance(len(block))
    return h.hexdigest()


DIGEST_SUFFIX = ".sha256"  # `NAME.sha256` beside NAME: "<hex>  NAME", as sha256sum writes


def digest_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + DIGEST_SUFFIX)


def write_digest(path: Path, digest: str | None = None) -> None:
    """Record the sha256 of `path`'s bytes beside it (written after the file, atomically), so
    a later reader can tell a file that is whole from one damaged since (`digest_problem`).
    `digest`: that sha256, when the writer of the file already has it."""
    path = Path(path)
    try:
        digest = digest or sha256_file(path)
    except OSError as exc:
        raise os_error(path, exc, "cannot read") from None
    with atomic_write(digest_path(path)) as fh:
        fh.write(f"{digest}  {path.name}\n")


def digest_problem(path: Path) -> str | None:
    """None when `path` matches the digest `write_digest` recorded; otherwise what is wrong,
    in words (no digest counts as damaged: the file may be half written)."""
    try:
        recorded = digest_path(path).read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return f"no valid checksum ({digest_path(path).name})"
    try:
        actual = sha256_file(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if actual != recorded:
        size = Path(path).stat().st_size
        what = "empty" if size == 0 else f"{size} bytes"
        return f"damaged: its sha256 differs from the one recorded when it was saved ({what})"
    return None


def check_apart(inputs: Iterable[str], owned: Iterable[Path]) -> None:
    """Refuse an input that is one of a run's own output paths (`owned`), which a run, or
    --force, replaces or deletes: the same file by device and inode (a hard link or a symlink
    to it counts), or a file inside an owned folder. Stdin ('-') is never an output."""
    by_inode: dict[tuple[int, int], Path] = {}
    folders: list[tuple[Path, Path]] = []
    for p in map(Path, owned):
        try:
            st = p.stat()
        except OSError:
            continue  # not there yet, so no input can be it
        if p.is_dir():
            folders.append((Path(os.path.abspath(p)), p.resolve()))
        else:
            by_inode[(st.st_dev, st.st_ino)] = p
    for inp in inputs:
        if inp == "-":
            continue
        try:
            st = os.stat(inp)
        except OSError:
            continue  # the reader names a missing input
        hit = by_inode.get((st.st_dev, st.st_ino))
        names = (Path(os.path.abspath(inp)), Path(inp).resolve())
        hit = hit or next((d for d, real in folders for n in names
                           if n.is_relative_to(d) or n.is_relative_to(real)), None)
        if hit is not None:
            raise InputError(f"{inp}: this input is also the run's output {hit}, which the run "
                             "replaces (or --force deletes); an input is never overwritten: "
                             "move it or choose another output directory")


class ExternalSort:
    """Sorts text lines without holding them all. Text comes a block of whole lines at a time,
    kept as the blocks until `run_chars` characters are buffered; then its lines are sorted and
    spilled to `tmp_dir` as a run. Runs are merged at most `fan_in` at a time, line by line.

    Blocks, not a string per line: a line held as its own string costs ~65 bytes (12 MiB for
    the 182k rows of 140 Mbp of contigs), and 50,000 of them held while the run went on raised
    the parent's peak RSS by 12% at 30x the input; 256 KiB of text is ~9,000 rows. Lines end
    at "\n" only, as they are written."""

    def __init__(self, tmp_dir: Path, prefix: str, run_chars: int = 1 << 18,
                 fan_in: int = 128) -> None:
        self.tmp_dir, self.prefix = Path(tmp_dir), prefix
        self.run_chars, self.fan_in = run_chars, fan_in
        self._blocks: list[str] = []
        self._chars = 0
        self._runs: list[Path] = []
        self._n_runs = 0

    def add(self, text: str) -> None:
        """Add whole lines, each with its line end, as one string."""
        if text:
            self._blocks.append(text)
            self._chars += len(text)
            if self._chars >= self.run_chars:
                self._spill()

    def _sorted_lines(self) -> list[str]:
        """The buffered lines, sorted; the buffer is emptied."""
        lines = list(io.StringIO("".join(self._blocks), newline="\n"))
        self._blocks, self._chars = [], 0
        lines.sort()
        return lines

    def _spill(self) -> None:
        self._runs.append(self._write_run(self._sorted_lines()))

    def _write_run(self, lines: Iterable[str]) -> Path:
        path = self.tmp_dir / f"{self.prefix}_{self._n_runs:06d}.tsv"
        self._n_runs += 1
        with path.open("w", newline="\n") as fh:
            fh.writelines(lines)
        return path

    def write_sorted(self, fh: TextIO) -> None:
        """Write every line added, sorted, to `fh`; the runs on disk are deleted."""
        if not self._runs:  # all in memory: no run to merge
            fh.writelines(self._sorted_lines())
            return
        if self._blocks:
            self._spill()
        runs = self._runs
        while len(runs) > self.fan_in:  # keep the number of open files bounded
            runs = [self._merge_run(runs[i:i + self.fan_in])
                    for i in range(0, len(runs), self.fan_in)]
        self._runs = []
        _merge_into(runs, fh)

    def _merge_run(self, runs: list[Path]) -> Path:
        path = self._write_run(())
        with path.open("w", newline="\n") as fh:
            _merge_into(runs, fh)
        return path


def _merge_into(runs: list[Path], fh: TextIO) -> None:
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(p.open(newline="\n")) for p in runs]
        fh.writelines(heapq.merge(*files))
    for p in runs:
        p.unlink()


class DirLock:
    """An advisory lock on a directory (`fcntl.flock` on a file in it), held while one run
    writes there: a second run into the same directory refuses at once instead of sharing
    its temporary files. The lock file is removed on release."""

    def __init__(self, directory: Path, name: str) -> None:
        self.path = Path(directory) / name
        self._fh: Any = None

    def __enter__(self) -> DirLock:
        import fcntl

        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise os_error(self.path.parent, exc, "cannot write there") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise OutputError(f"{self.path.parent}: another virnucpro run is writing there "
                              f"(pid {holder}); wait for it to finish or choose another "
                              "output directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._fh.close()
