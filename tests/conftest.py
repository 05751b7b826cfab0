"""Shared fixtures. Data that tests cannot generate is in `tests/data/` (see PROVENANCE.md)."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
# The real DNABERT-S tokenizer (zhihan1996/DNABERT-S), given to the tiny random models.
DNABERT_TOKENIZER = DATA / "dnabert-s" / "tokenizer.json"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """`tests/data`: the original tool's worked examples and the real DNABERT-S tokenizer."""
    return DATA


# ------------------------------------------------------------------ made once per session
# Most of the suite's time is worker processes starting (each imports torch and transformers,
# about 5 CPU-seconds), so what several tests only read is made once per test session, by
# whichever process (pytest-xdist worker) asks for it first: the others wait for it and reuse
# it. A test that changes such a directory copies it first (shutil.copytree).
def _session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this session sees: pytest-xdist puts each worker's basetemp
    in the session's own."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "made-once"
    root.mkdir(exist_ok=True)
    return root


def made_once(tmp_path_factory: pytest.TempPathFactory, name: str,
              make: Callable[[Path], object]) -> Path:
    """`ROOT/name`, made by `make(path)` by the first process of this session that asks for
    it (under a file lock; made in place, as runs record their own paths). A failed `make`
    is tried again by the next asker."""
    import fcntl

    root = _session_root(tmp_path_factory)
    path = root / name
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not (root / f"{name}.done").exists():
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            (root / f"{name}.done").touch()
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    """Tiny random DNABERT-S, ESM-2 and classifier in their real on-disk formats (one copy per
    session, which every process reads)."""
    from virnucpro.testing import TinyModels, make_tiny_models

    root = made_once(tmp_path_factory, "tiny-models",
                     lambda path: make_tiny_models(path, tokenizer=DNABERT_TOKENIZER))
    # The names make_tiny_models gives them.
    models = TinyModels(root / "dnabert-s", root / "esm2", root / "classifier.pth")
    assert all(p.exists() for p in (models.dnabert_dir, models.esm_dir, models.classifier_path))
    return models


def orf_rich_fasta(path: Path, n: int, seed: int = 0, lengths: tuple[int, ...] = (
        120, 300, 499, 500, 501, 750, 1200, 1600)) -> Path:
    """Write `n` records built from stop-free codons, so most chunks keep a frame."""
    import random

    rng = random.Random(seed)
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
             if a + b + c not in ("TAA", "TAG", "TGA")]
    with path.open("w") as fh:
        for i in range(n):
            length = lengths[i % len(lengths)]
            seq = "".join(rng.choice(sense) for _ in range(length // 3 + 1))[:length]
            fh.write(f">seq{i} synthetic record {i}\n{seq}\n")
    return path


def composition_fasta(path: Path, n: int, gc: float, seed: int = 0, prefix: str = "s",
                      lengths: tuple[int, ...] = (300, 450, 600, 900)) -> Path:
    """Write `n` records of stop-free codons drawn with a GC bias: each codon is weighted by
    gc^(G+C) * (1-gc)^(A+T). Two files with different `gc` are a data set that even tiny
    random embedding models separate (codon usage shows in both the DNA and the protein)."""
    import random

    rng = random.Random(seed)
    sense = [a + b + c for a in "ACGT" for b in "ACGT" for c in "ACGT"
             if a + b + c not in ("TAA", "TAG", "TGA")]
    weights = [gc ** sum(x in "GC" for x in c) * (1 - gc) ** sum(x in "AT" for x in c)
               for c in sense]
    with path.open("w") as fh:
        for i in range(n):
            length = lengths[i % len(lengths)]
            seq = "".join(rng.choices(sense, weights, k=length // 3 + 1))[:length]
            fh.write(f">{prefix}{i}\n{seq}\n")
    return path


# A small predict output written by hand (threshold 0.5, chunk size 500), for evaluate and
# plot tests: every call kind, a chunk without frames, a sequence without any, and one
# sequence (x1) that the truth does not label. Scores follow verdicts.py: chunk score =
# (max s2 + min s2) / 2 when s1 = 1 - s2; sequence score = mean of chunk scores.
PREDICT_FRAMES = [  # (frame id, score2)
    ("v1_chunk_1F1", "0.9"), ("v1_chunk_1R2", "0.6"), ("v1_chunk_2F1", "0.3"),
    ("v2_chunk_1F2", "0.2"), ("o1_chunk_1F3", "0.1"), ("o1_chunk_1R1", "0.7"),
    ("o2_chunk_1F1", "0.55"), ("x1_chunk_1F1", "0.8"),
]
PREDICT_CHUNKS = [  # chunk_id, seq_id, start, end, n_frames, score, call
    ("v1_chunk_1", "v1", 0, 500, 2, "0.75", "virus"),
    ("v1_chunk_2", "v1", 500, 1000, 1, "0.3", "not_virus"),
    ("v2_chunk_1", "v2", 0, 400, 1, "0.2", "not_virus"),
    ("o1_chunk_1", "o1", 0, 500, 2, "0.4", "not_virus"),
    ("o1_chunk_2", "o1", 200, 700, 0, "", "no_call"),
    ("o2_chunk_1", "o2", 0, 300, 1, "0.55", "virus"),
    ("o3_chunk_1", "o3", 0, 200, 0, "", "no_call"),
    ("x1_chunk_1", "x1", 0, 300, 1, "0.8", "virus"),
]
PREDICT_SEQUENCES = [  # seq_id, length, n_chunks, n_chunks_scored, n_frames, score, call, reason
    ("v1", 1000, 2, 2, 3, "0.525", "virus", ""),
    ("v2", 400, 1, 1, 1, "0.2", "not_virus", ""),
    ("o1", 700, 2, 1, 2, "0.4", "not_virus", ""),
    ("o2", 300, 1, 1, 1, "0.55", "virus", ""),
    ("o3", 200, 1, 0, 0, "", "no_call", "no_stop_free_frame"),
    ("x1", 300, 1, 1, 1, "0.8", "virus", ""),
]
PREDICT_TRUTH = {"v1": "virus", "v2": "virus", "o1": "other", "o2": "other", "o3": "other",
                 "ghost": "virus"}  # ghost: labelled, never predicted


def write_predict_output(out: Path) -> Path:
    """Write the hand-made predict output above into `out` (in our real file formats)."""
    import json

    from virnucpro.outputs import (
        CHUNK_COLUMNS,
        PREDICTION_COLUMNS,
        SEQUENCE_COLUMNS,
        predict_paths,
        tsv_row,
    )

    out.mkdir(parents=True, exist_ok=True)
    paths = predict_paths(out)
    frames = [(fid, "virus" if float(s2) > 0.5 else "others", str(round(1 - float(s2), 6)), s2)
              for fid, s2 in PREDICT_FRAMES]
    for role, columns, rows in (("predictions", PREDICTION_COLUMNS, frames),
                                ("chunks", CHUNK_COLUMNS, PREDICT_CHUNKS),
                                ("sequences", SEQUENCE_COLUMNS, PREDICT_SEQUENCES)):
        paths[role].write_text(tsv_row(columns) + "".join(tsv_row(r) for r in rows))
    paths["run"].write_text(json.dumps({"params": {"threshold": 0.5}}))
    return out


RESULT_FILES = ("predictions", "highest", "sequences", "chunks", "viral", "regions",
                "regions_fna")


def predict_args(models, inputs, out, *extra: str, threads: int | None = 1) -> list[str]:
    """`virnucpro predict` arguments for the tiny models, offline and quiet.

    One CPU thread per worker unless `threads` (None: the default, the CPUs this process may
    use) or `extra` says otherwise (the last --threads wins): tiny models gain nothing from
    more, and on a loaded machine two OpenMP threads run them 5-20x slower than one."""
    return ["predict", *map(str, inputs), "-o", str(out), "--dnabert", str(models.dnabert_dir),
            "--esm", str(models.esm_dir), "-p", str(models.classifier_path), "--offline",
            "--no-progress", "-q", *(["--threads", str(threads)] if threads else []), *extra]


# A classifier trained with `virnucpro train` on the tiny backbones: GC-rich "virus" against
# AT-rich "other" sequences, 300 bp chunks. Fast settings for tiny features (the original's
# lr, 2e-4, needs far more steps than a test).
TRAIN_CHUNK = 300
TRAIN_FAST = ["--lr", "0.01", "--hidden-dim", "32", "--batch-size", "16", "--max-epochs", "12",
              "--patience", "4", "--unit-frames", "64", "--threads", "1"]


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> dict[str, Path]:
    def make(d: Path) -> None:
        d.mkdir()
        composition_fasta(d / "viral.fa", 40, gc=0.68, seed=1, prefix="v")
        composition_fasta(d / "other.fa", 48, gc=0.32, seed=2, prefix="o")

    d = made_once(tmp_path_factory, "train-data", make)
    return {"viral": d / "viral.fa", "other": d / "other.fa"}


def train_args(models, data, out: Path, *extra: str) -> list[str]:
    """`virnucpro train` arguments on `train_data` with the tiny backbones."""
    return ["train", "--viral", str(data["viral"]), "--other", str(data["other"]), "-o",
            str(out), "--chunk-size", str(TRAIN_CHUNK), "--dnabert", str(models.dnabert_dir),
            "--esm", str(models.esm_dir), "--offline", "--no-progress", "-q", *TRAIN_FAST,
            *extra]


@pytest.fixture(scope="session")
def trained(tiny_models, train_data, tmp_path_factory) -> Path:
    """The classifier `train_args` makes; trained once per session (test_train and
    test_regions_inserts share it and only read it: a test that retrains it copies it)."""
    from virnucpro.cli import main

    def make(folder: Path) -> None:
        folder.mkdir()
        assert main(train_args(tiny_models, train_data, folder / "model")) == 0

    return made_once(tmp_path_factory, "trained", make) / "model"


def predict_results(out: Path) -> dict[str, bytes]:
    """The bytes of every result file predict writes (run.json, with timings, aside)."""
    from virnucpro.outputs import predict_paths

    paths = predict_paths(out)
    return {role: paths[role].read_bytes() for role in RESULT_FILES}


# ------------------------------------------------------------------ runs shared by tests
# Settings of many runs: one CPU worker, one thread, and units of 4 frames, so that a run
# over 60 records has dozens of units (a test can kill it between two of them).
SMALL_UNITS = ("--device", "cpu", "--threads", "1", "--unit-frames", "4")
# test_shards.py's settings (test_ray.py and test_workflow.py compare with its runs).
SHARD_SETTINGS = ("--device", "cpu", "--threads", "1", "--unit-frames", "24", "--threshold", "0.3")


def with_empty_records(path: Path, n: int) -> Path:
    """`orf_rich_fasta` of `n` records, then a record without bases and one of two bases
    (no frame in either), so the last unit has no frame."""
    orf_rich_fasta(path, n)
    with path.open("a") as fh:
        fh.write(">empty\n\n>tiny two bases\nAC\n")
    return path


def shared_input(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """An input made once per session, by name: "orfN" is `orf_rich_fasta` of N records,
    "orfN+empty" is `with_empty_records` of N; any other name is a file (returned as it is)."""
    if not name.startswith("orf"):
        return Path(name)
    records, _, tail = name[3:].partition("+")
    write = {"": orf_rich_fasta, "empty": with_empty_records}[tail]

    def make(folder: Path) -> None:
        folder.mkdir()
        write(folder / "in.fa", int(records))

    return made_once(tmp_path_factory, f"input-{name}", make) / "in.fa"


@dataclass(frozen=True)
class SharedRun:
    """A finished `predict` run made once per session: tests read `out`, or copy it first."""

    input: Path
    out: Path


@pytest.fixture(scope="session")
def shared_run(tiny_models, tmp_path_factory) -> Callable[..., SharedRun]:
    """`shared_run(input, *extra)`: the finished `predict_args(tiny_models, [input], OUT,
    *extra)` run, made by the first test of the session that asks for it (`input` as
    `shared_input` names it). Tests that compare a run with an uninterrupted one of the same
    input and settings take it from here instead of each starting their own."""
    from virnucpro.cli import main

    def get(name: str, *extra: str) -> SharedRun:
        inp = shared_input(tmp_path_factory, name)
        key = hashlib.sha256(repr((name, extra)).encode()).hexdigest()[:12]

        def make(folder: Path) -> None:
            folder.mkdir()
            assert main(predict_args(tiny_models, [inp], folder / "out", *extra)) == 0

        # Named "out", as most tests name theirs: the MultiQC files name the sample after it.
        out = made_once(tmp_path_factory, f"run-{Path(name).stem}-{key}", make) / "out"
        return SharedRun(inp, out)

    return get


# ------------------------------------------------------------------ the order of the modules
# `make test` runs the suite on two processes (pytest-xdist), each module whole in one of them
# (--dist loadscope), handed out in collection order (--no-loadscope-reorder): the slowest
# modules first, so that the many quick ones even out the end. Slowest first, as measured
# (wall time on two busy cores); a module not listed is quick and comes after these.
SLOWEST_FIRST = (
    "test_benchmarks.py", "test_ray.py", "test_shards.py", "test_thin_parent.py",
    "test_runtime.py", "test_predict.py", "test_compile.py", "test_train.py",
    "test_failures.py", "test_crash_safety.py", "test_classifier.py", "test_workflow.py",
    "test_worker.py", "test_regions_inserts.py", "test_cpu.py", "test_selftest.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: same order within
