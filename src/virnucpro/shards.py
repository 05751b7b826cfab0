"""Shards: one predict run split over N independent jobs, and `virnucpro merge` to join them.

Every shard builds the same work units from the whole input (reading is cheap next to the
models) and scores only its own: each unit, in input order, goes to the shard with the least
work so far. The split therefore depends only on the input and `--unit-frames`, and each unit
is scored with exactly the batches a single run would use. A long record cut into parts may
have them in different shards: its sequence row, viral.fna record and regions appear only in
the merged output.

A finished shard directory holds predict's usual files for its own records, its scored
units (`units/NNNNNN.npz`: scores, rendered rows and, with --save-embeddings, the features)
and `shard.json`. `merge` reads the original inputs again and renders every unit from the
scores its shard saved, with the same functions and writer a single run uses: the files come
out byte-identical to a single run's by construction.

"""

from __future__ import annotations

import logging
import re
import shutil
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from virnucpro import files, mqc, outputs
from virnucpro.commit import JOURNAL, STAGING, Switch, recover
from virnucpro.errors import InputError, OutputError
from virnucpro.frames import piece_frames
from virnucpro.reader import ReadStats
from virnucpro.regions import RegionParams
from virnucpro.render import render_unit
from virnucpro.runtime.plan import input_record
from virnucpro.runtime.protocol import RecordUnit, Render, UnitResult
from virnucpro.runtime.units import (
    UNITS_DIR,
    Balancer,
    UnitDamaged,
    UnitStream,
    load_unit,
    text_pieces,
    unit_path,
)
from virnucpro.writer import PredictWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

SHARD_FILE = "shard.json"  # written just before run.json; see `write_shard_record`
SHARD_FORMAT = 1


def shard_paths(out_dir: Path) -> dict[str, Path]:
    """The files a shard writes besides predict's own."""
    return {"shard": Path(out_dir) / SHARD_FILE, "units": Path(out_dir) / UNITS_DIR}


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 1 <= I <= N; ValueError names the problem."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not I/N (shard I of N, e.g. 3/8)")
    index, count = int(m[1]), int(m[2])
    if not 1 <= index <= count:
        raise ValueError(f"{text!r}: the shard number must be between 1 and {count}")
    return index, count


def write_shard_record(out_dir: Path, run_fingerprint: str, shard: tuple[int, int],
                       units: Sequence[int]) -> None:
    """shard.json: which run this is a part of, which part, and the units it scored."""
    files.write_json(shard_paths(out_dir)["shard"], {
        "format": SHARD_FORMAT, "run_fingerprint": run_fingerprint, "shard": shard[0],
        "shards": shard[1], "units": list(units)})


def owned_paths(out_dir: Path) -> list[Path]:
    """Every path that predict, a shard or merge writes, replaces or (with --force) deletes
    in `out_dir`: no input may be one of them (`files.check_apart`)."""
    out_dir = Path(out_dir)
    return [*outputs.predict_paths(out_dir).values(),
            *(out_dir / name for name in outputs.MQC_FILES.values()),
            *shard_paths(out_dir).values(), out_dir / outputs.STATE_DIR,
            out_dir / outputs.EMBEDDINGS_DIR, out_dir / JOURNAL, out_dir / STAGING]


def remove_shard_files(out_dir: Path) -> None:
    """For --force: what an earlier shard run left in `out_dir`."""
    paths = shard_paths(out_dir)
    paths["shard"].unlink(missing_ok=True)
    shutil.rmtree(paths["units"], ignore_errors=True)


# ------------------------------------------------------------------ merge
@dataclass(frozen=True)
class Shard:
    """One finished shard directory, as merge reads it."""

    dir: Path
    index: int
    count: int
    run_fingerprint: str
    units: tuple[int, ...]
    run: dict[str, Any]  # its run.json

    @property
    def name(self) -> str:
        return f"{self.index}/{self.count}"


def _read_json(path: Path) -> Any:
    return files.read_json(path, error=InputError, missing_ok=True)


def read_shard(shard_dir: Path) -> Shard:
    """A finished shard directory's shard.json and run.json."""
    shard_dir = Path(shard_dir)
    if not shard_dir.is_dir():
        raise InputError(f"{shard_dir}: no such directory")
    info = _read_json(shard_paths(shard_dir)["shard"])
    if info is None:
        raise InputError(f"{shard_dir}: not a shard output (no {SHARD_FILE}); shards come "
                         "from `virnucpro predict --shard I/N`")
    run = _read_json(outputs.predict_paths(shard_dir)["run"])
    if run is None:
        raise InputError(f"{shard_dir}: shard {info['shard']}/{info['shards']} is unfinished "
                         "(no run.json); run its predict command again to finish it")
    if info.get("format") != SHARD_FORMAT:
        raise InputError(f"{shard_dir}: {SHARD_FILE} has format {info.get('format')!r}, "
                         f"this virnucpro reads {SHARD_FORMAT}")
    try:
        return Shard(shard_dir, int(info["shard"]), int(info["shards"]),
                     str(info["run_fingerprint"]), tuple(map(int, info["units"])), run)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{shard_dir}: {SHARD_FILE} is malformed ({exc!r})") from None


def _difference(a: Shard, b: Shard) -> str:
    """What makes two shards parts of different runs, in words."""
    ra, rb = a.run, b.run
    for key in sorted(set(ra["params"]) | set(rb["params"])):
        va, vb = ra["params"].get(key), rb["params"].get(key)
        if va != vb:
            return f"{key} {va} vs {vb}"
    if [i["sha256"] for i in ra["inputs"]] != [i["sha256"] for i in rb["inputs"]]:
        return "other inputs"
    if {k: m["sha256"] for k, m in ra["models"].items()} != \
            {k: m["sha256"] for k, m in rb["models"].items()}:
        return "other models"
    return "other run fingerprint"


def check_complete(shards: Sequence[Shard]) -> list[Shard]:
    """All N shards of one run, each once; returns them in shard order."""
    first = shards[0]
    by_index: dict[int, Shard] = {}
    for s in shards:
        if s.count != first.count:
            raise InputError(f"{first.dir} is shard {first.name} but {s.dir} is shard "
                             f"{s.name}: they split different runs")
        if s.run_fingerprint != first.run_fingerprint or s.run["params"] != first.run["params"]:
            raise InputError(f"{first.dir} and {s.dir} are shards of different runs "
                             f"({_difference(first, s)}); merge the shards of one run")
        if s.index in by_index:
            raise InputError(f"shard {s.name} is given twice: {by_index[s.index].dir} and "
                             f"{s.dir}")
        by_index[s.index] = s
    missing = [f"{i}/{first.count}" for i in range(1, first.count + 1) if i not in by_index]
    if missing:
        raise InputError(f"missing shard{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing)} of the run in {first.dir}; merge needs "
                         f"all {first.count}")
    return [by_index[i] for i in sorted(by_index)]


def locate_inputs(shards: Sequence[Shard]) -> tuple[str, ...]:
    """The run's input files: a path one of the shards recorded whose content is unchanged."""
    found = []
    for k, want in enumerate(shards[0].run["inputs"]):
        tried = dict.fromkeys(s.run["inputs"][k]["path"] for s in shards)
        for path in tried:
            if Path(path).is_file() and input_record(path)["sha256"] == want["sha256"]:
                found.append(path)
                break
        else:
            raise InputError(f"{', '.join(tried)}: input {k + 1} of the sharded run is missing "
                             f"or has changed (sha256 {want['sha256'][:12]}...); merge reads "
                             "the original inputs again")
    return tuple(found)


def _prepare_merge_output(out_dir: Path, state: Path, force: bool) -> None:
    """Under the lock: refuse to merge over outputs or an unfinished merge without --force."""
    recover(out_dir)  # a switch of finished files that a killed merge left half done
    paths = outputs.predict_paths(out_dir)
    present = [p.name for p in [*paths.values(), state] if p.exists()]
    if present and not force:
        raise OutputError(f"{out_dir}: already holds {', '.join(present)}; use --force to "
                          "overwrite")
    for p in paths.values():
        p.unlink(missing_ok=True)
    shutil.rmtree(state, ignore_errors=True)


def _owned_units(shards: Sequence[Shard], stream: Iterable[tuple[RecordUnit, T]],
                 ) -> Iterator[tuple[Shard, RecordUnit, T]]:
    """Every unit of the run with the shard that scored it; checks the shards' unit lists
    against the split recomputed from the inputs."""
    balancer = Balancer(len(shards))
    listed = [iter(s.units) for s in shards]
    for unit, payload in stream:
        shard = shards[balancer.assign(unit.cost) - 1]
        if next(listed[shard.index - 1], None) != unit.index:
            raise InputError(f"{shard.dir}: its units do not match the split of the inputs "
                             "(made by another virnucpro version?)")
        yield shard, unit, payload
    for s, rest in zip(shards, listed, strict=True):
        if next(rest, None) is not None:
            raise InputError(f"{s.dir}: lists more units than the inputs have")


def _load(shard: Shard, unit: RecordUnit, need_features: bool) -> UnitResult:
    rerun = (f"shard {shard.name} needs a rerun: run its predict command again with --force "
             f"(into {shard.dir})")
    path = unit_path(shard.dir, unit.index)
    if not path.exists():
        raise InputError(f"{path}: missing; {rerun}")
    try:
        return load_unit(shard.dir, unit, need_features=need_features)
    except UnitDamaged as exc:
        raise InputError(f"{exc}; {rerun}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read ({exc}); {rerun}") from None


def _merged_record(shards: Sequence[Shard], inputs: Sequence[str], out_dir: Path,
                   counts: dict[str, Any], wall: float, command_line: Sequence[str],
                   ) -> dict[str, Any]:
    """run.json of the merged directory: the run's fingerprint (what a single run records),
    and each shard's devices and timing."""
    base = shards[0].run
    run_inputs = [{**rec, "path": str(Path(p).resolve())}
                  for rec, p in zip(base["inputs"], inputs, strict=True)]
    return {
        **base, "command_line": list(command_line), "fingerprint": shards[0].run_fingerprint,
        "config": {**base["config"], "output_dir": str(Path(out_dir).resolve()), "shard": None},
        "inputs": run_inputs, "counts": counts,
        "plan": {**(base.get("plan") or {}), "workers": [
            w for s in shards for w in (s.run.get("plan") or {}).get("workers", [])]},
        "timing": {"wall_seconds": round(wall, 3), "shards": [
            {"shard": s.name, "dir": str(s.dir.resolve()), **s.run["timing"]} for s in shards]},
        "merged_from": [str(s.dir.resolve()) for s in shards],
    }


def merge_shards(shard_dirs: Sequence[Path], out_dir: Path, *, force: bool = False,
                 command_line: Sequence[str] = ()) -> dict[str, Any]:
    """Write into `out_dir` exactly the files a single run would, from all its shards.
    Returns what run.json records."""
    t0 = time.perf_counter()
    shards = check_complete([read_shard(Path(d)) for d in shard_dirs])
    inputs = locate_inputs(shards)
    state = Path(out_dir) / outputs.STATE_DIR
    out = Path(out_dir).resolve()
    if any(s.dir.resolve() == out for s in shards):
        raise OutputError(f"{out_dir}: is one of the shard directories; merge into another")
    files.check_apart(inputs, owned_paths(out_dir))  # --force or not
    outputs.make_output_dir(out_dir)
    with files.DirLock(Path(out_dir), outputs.LOCK_FILE):
        _prepare_merge_output(out_dir, state, force)
        record = _write_merged(shards, inputs, Path(out_dir), state, command_line, t0)
    log.info("merged %d shards: %d sequences; outputs in %s", len(shards),
             record["counts"]["sequences"], out_dir)
    return record


def _write_merged(shards: Sequence[Shard], inputs: tuple[str, ...], out_dir: Path, state: Path,
                  command_line: Sequence[str], t0: float) -> dict[str, Any]:
    params = shards[0].run["params"]
    features = bool(params["save_embeddings"])
    render = Render(params["chunk_size"], params["threshold"],
                    RegionParams(params["min_region_length"], params["region_switch_prob"]),
                    features)
    writer = PredictWriter(out_dir, state / "merge", render)
    # The inputs are the run's (checked by sha256): their ids were checked then.
    stream = UnitStream(inputs, params["chunk_size"], params["unit_frames"], ids_checked=True)
    read = ReadStats()
    try:
        for shard, unit, record in _owned_units(shards, stream.units(read)):
            # Rendered again from the saved scores: a shard may have been re-thresholded.
            result = _load(shard, unit, features)
            pieces = text_pieces(unit, render.chunk_size)
            rendered = render_unit(piece_frames(pieces, render.chunk_size), pieces,
                                   result.scores, render.threshold, render.regions,
                                   render.chunk_size, features)
            writer.add(rendered, record, result.embeddings)
    except BaseException:
        writer.abort()
        shutil.rmtree(state, ignore_errors=True)
        raise
    record = _merged_record(shards, inputs, out_dir,
                            {**writer.counts(), "rna_records": read.rna_records},
                            time.perf_counter() - t0, command_line)
    switch = Switch(out_dir, remove=[state])  # all files at once (commit.py)
    mqc.write_mqc(out_dir, Path(out_dir).resolve().name, record["counts"]["predictions"],
                  writer.histogram, switch)
    writer.finish(record, switch)
    return record
