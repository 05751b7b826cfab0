"""The crash-safe switch of a finished run's files: an output directory is always entirely
the old run or entirely the new one, whenever the process is killed.

Re-thresholding, the end of `predict` and the end of `merge` replace many files of an output
directory at once. Each does it through one `Switch`:

1. every new file is written first under a temporary name inside the directory (`stage`,
   `write_json`, or `add` for a file a writer already made there) and synced to disk;
2. a journal, `.virnucpro.switch.json`, is written atomically: it lists every rename, run.json
   last, and what to delete afterwards (the unfinished run's state). It is the commit point;
3. the files are renamed into place, run.json last, and the listed leftovers are deleted;
4. the journal is removed, then the staging folder.

`recover(out_dir)` runs first in every predict, merge and re-threshold, under the directory's
lock. With a journal it finishes the switch (a rename whose temporary file is gone was done
already); without one it deletes whatever an interrupted switch had staged, so the old files
stand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from virnucpro.errors import OutputError
from virnucpro.files import os_error, read_json, write_json

log = logging.getLogger(__name__)

JOURNAL = ".virnucpro.switch.json"  # present only between the commit point and the end
STAGING = ".virnucpro.switch"  # the folder new files are staged in
FORMAT = 1

# Called with the name of every step just done ("staged sequences.tsv", "journal",
# "renamed run.json", ...): the crash-safety tests stop a switch here, at every step.
after_step: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if after_step is not None:
        after_step(name)


class Switch:
    """The new files of one output directory, switched into place together by `commit`."""

    def __init__(self, out_dir: Path, remove: Iterable[Path] = ()) -> None:
        self.out_dir = Path(out_dir)
        self.staging = self.out_dir / STAGING
        self.remove = [Path(p) for p in remove]  # deleted once every file is in place
        self._renames: list[tuple[Path, Path]] = []

    def stage(self, path: Path) -> Path:
        """A temporary path for what will become `path`; write it before `commit`."""
        try:
            self.staging.mkdir(exist_ok=True)
        except OSError as exc:
            raise os_error(self.staging, exc) from None
        tmp = self.staging / f"{len(self._renames):04d}_{Path(path).name}"
        self._renames.append((tmp, Path(path)))
        return tmp

    def add(self, src: Path, path: Path) -> None:
        """`src`, a finished file inside the output directory, will become `path`."""
        self._renames.append((Path(src), Path(path)))
        _step(f"staged {Path(path).name}")

    def write_json(self, path: Path, data: object) -> None:
        write_json(self.stage(path), data)
        _step(f"staged {Path(path).name}")

    def commit(self, run_path: Path, run_record: object) -> None:
        """Stage `run_record` as `run_path` (renamed last), write the journal, switch."""
        self.write_json(run_path, run_record)
        entries = [[self._rel(src), self._rel(dst)] for src, dst in self._renames]
        try:
            for src, _ in self._renames:
                _sync(src)
            _sync(self.staging if self.staging.exists() else self.out_dir)
        except OSError as exc:
            raise os_error(self.out_dir, exc) from None
        write_json(self.out_dir / JOURNAL, {"format": FORMAT, "renames": entries,
                                            "remove": [self._rel(p) for p in self.remove]})
        _step("journal")
        _finish(self.out_dir)

    def _rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.out_dir).as_posix()
        except ValueError:
            raise AssertionError(f"{path} is outside {self.out_dir}") from None


def recover(out_dir: Path) -> None:
    """Finish the switch an interrupted run committed to, or undo one it had not: after
    this, `out_dir` holds one run's files only. Call it under the directory's lock."""
    out_dir = Path(out_dir)
    if (out_dir / JOURNAL).exists():
        log.info("%s: finishing the switch of its files that an interrupted run began",
                 out_dir)
        _finish(out_dir)
    for tmp in out_dir.glob(f".{JOURNAL}.*.tmp"):  # a journal killed while written
        tmp.unlink(missing_ok=True)
    shutil.rmtree(out_dir / STAGING, ignore_errors=True)


def _finish(out_dir: Path) -> None:
    """Steps 3 and 4, from wherever an earlier try stopped."""
    journal = read_json(out_dir / JOURNAL, error=OutputError,
                        hint="; use --force to recompute the run")
    try:
        for src, dst in journal["renames"]:
            _rename(out_dir, out_dir / src, out_dir / dst)
        for p in journal["remove"]:
            shutil.rmtree(out_dir / p, ignore_errors=True)
        _sync(out_dir)
        (out_dir / JOURNAL).unlink()
        _step("journal removed")
        shutil.rmtree(out_dir / STAGING, ignore_errors=True)
        _step("cleaned")
    except OSError as exc:
        raise os_error(out_dir, exc) from None
    except (KeyError, TypeError, ValueError):
        raise OutputError(f"{out_dir / JOURNAL}: malformed; use --force to recompute the "
                          "run") from None


def _rename(out_dir: Path, src: Path, dst: Path) -> None:
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        _step(f"renamed {dst.name}")
    elif not dst.exists():
        raise OutputError(f"{out_dir}: an interrupted switch of its files cannot be finished "
                          f"({src.name} and {dst.name} are both gone); use --force to "
                          "recompute the run")


def _sync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (a crash of the machine, not only of us)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems cannot sync a folder
            os.fsync(fd)
    finally:
        os.close(fd)
