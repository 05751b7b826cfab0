"""regions.py finds inserts end to end: `virnucpro train` a 300 bp classifier on GC-rich
"virus" and AT-rich "host" sequences (tiny random backbones; conftest's `trained`, which
tests/test_train.py checks), `virnucpro predict` on host
contigs that each carry one virus insert and on insert-free host controls, then rebuild the
regions from chunks.tsv. Prints the figures (pytest -s) and asserts the goals:
>= 90% of inserts found with both boundaries within one chunk, <= 0.1 false regions per Mb
of control."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import TRAIN_CHUNK, composition_fasta

from virnucpro.cli import main
from virnucpro.regions import Region, RegionParams, regions_from_chunks_tsv

pytestmark = pytest.mark.slow

CHUNK = TRAIN_CHUNK
VIRUS_GC, HOST_GC = 0.68, 0.32  # the classes conftest's `trained` model learnt
N_INSERTS, N_CONTROLS, CONTROL_LENGTH = 10, 10, 100_000


def _bases(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith(">")]


def _contigs(d: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """Host contigs of 20-200 kb with one 3-20 kb insert each (at a random place), then
    insert-free controls; and each insert's [start, end)."""
    rng = random.Random(7)
    host_lengths = tuple(rng.randint(20_000, 200_000) for _ in range(N_INSERTS))
    insert_lengths = tuple(rng.randint(3_000, 20_000) for _ in range(N_INSERTS))
    hosts = _bases(composition_fasta(d / "hosts.fa", N_INSERTS, HOST_GC, 11, "h", host_lengths))
    inserts = _bases(composition_fasta(d / "inserts.fa", N_INSERTS, VIRUS_GC, 12, "i",
                                       insert_lengths))
    controls = _bases(composition_fasta(d / "controls.fa", N_CONTROLS, HOST_GC, 13, "c",
                                        (CONTROL_LENGTH,)))
    truth, records = {}, []
    for k, (host, insert) in enumerate(zip(hosts, inserts, strict=True)):
        at = rng.randint(0, len(host))
        truth[f"insert{k}"] = (at, at + len(insert))
        records.append((f"insert{k}", host[:at] + insert + host[at:]))
    records += [(f"control{k}", seq) for k, seq in enumerate(controls)]
    path = d / "contigs.fa"
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path, truth


@pytest.fixture(scope="module")
def predicted(tiny_models, trained, tmp_path_factory) -> tuple[Path, dict[str, tuple[int, int]]]:
    d = tmp_path_factory.mktemp("inserts")
    contigs, truth = _contigs(d)
    # One thread: 2 Mb through tiny models; two OpenMP threads only slow them down.
    assert main(["predict", str(contigs), "-o", str(d / "pred"), "-p", str(trained),
                 "--device", "cpu", "--threads", "1", "--dnabert", str(tiny_models.dnabert_dir),
                 "--esm", str(tiny_models.esm_dir), "--offline", "--no-progress", "-q"]) == 0
    return d / "pred", truth


def _score(regions: list[Region], truth: dict[str, tuple[int, int]]) -> dict:
    """Inserts found (one region overlaps, both boundaries within a chunk), boundary errors,
    and regions that overlap no insert."""
    found, errors = [], []
    for seq_id, (start, end) in truth.items():
        hits = [r for r in regions if r.seq_id == seq_id and r.start < end and r.end > start]
        if len(hits) == 1 and max(abs(hits[0].start - start), abs(hits[0].end - end)) <= CHUNK:
            found.append(seq_id)
            errors += [abs(hits[0].start - start), abs(hits[0].end - end)]
    false = [r for r in regions if r.seq_id not in truth
             or r.end <= truth[r.seq_id][0] or r.start >= truth[r.seq_id][1]]
    return {"found": found, "errors": errors, "false": false}


def _sequences(out: Path) -> dict[str, list[str]]:
    """sequences.tsv rows by seq_id."""
    rows = [line.split("\t") for line in (out / "sequences.tsv").read_text().splitlines()[1:]]
    return {row[0]: row for row in rows}


def test_regions_find_inserts_and_nothing_in_controls(predicted):
    out, truth = predicted
    regions = regions_from_chunks_tsv(out / "chunks.tsv", 0.5, RegionParams())
    result = _score(regions, truth)
    sequences = _sequences(out)
    control_mb = N_CONTROLS * CONTROL_LENGTH / 1e6
    host_mb = control_mb + sum(int(sequences[s][1]) - (e - b)
                               for s, (b, e) in truth.items()) / 1e6
    in_controls = sum(r.seq_id.startswith("control") for r in result["false"])
    share = len(result["found"]) / len(truth)
    errors = sorted(result["errors"]) or [0]
    print(f"\ninserts found, both boundaries within {CHUNK} bp: {len(result['found'])}/"
          f"{len(truth)} ({share:.0%}); boundary error bp: mean "
          f"{sum(errors) / len(errors):.0f}, median {errors[len(errors) // 2]}, max "
          f"{errors[-1]}; false regions: {in_controls} in {control_mb:g} Mb of control "
          f"({in_controls / control_mb:.2f}/Mb), {len(result['false']) - in_controls} beside "
          f"the inserts ({len(result['false']) / host_mb:.2f}/Mb of all {host_mb:.2f} Mb of "
          f"host); insert contigs called virus as a whole: "
          f"{sum(sequences[s][6] == 'virus' for s in truth)}/{len(truth)}")
    assert share >= 0.9
    assert in_controls / control_mb <= 0.1
    assert all(r.kind == "partial" for r in regions)
