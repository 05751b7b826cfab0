"""Model and end-to-end speed of `virnucpro predict` on this machine's CPU, with MFU.

    python benchmarks/bench_predict.py                  # full-size models, 300 frames
    python benchmarks/bench_predict.py --frames 90 --no-bf16 --json bench.json
    python benchmarks/bench_predict.py --contigs 95000 --no-bf16    # contig-like input
    python benchmarks/bench_predict.py --input contigs.fa --frames 90  # a real FASTA
    python benchmarks/bench_predict.py --quick          # tiny models, seconds (used by tests)

Models are random but of real size and written in the real formats: DNABERT-S 117M
(config.json + pytorch_model.bin + the real tokenizer.json when ../shared has it) and
ESM-2 150M (30 layers, 640 hidden; a fair-esm .pt converted by `convert_fair_esm` into the
HF directory we load). The classifier is the published shape (768 + 640 -> 512 -> 2).
The workload is, by default, frames of random 500 bp chunks whose first frame is stop-free
(about one kept frame per chunk). `--input` takes the frames of a given FASTA instead (real
contigs: a chunk across a gene end keeps no frame, a few keep two), `--contigs` those of
generated contig-like records (`common.contig_like_records`); both at `--chunk-size`.

Figures, all on the same frames: the fp32 matmul peak; tokens/s and MFU of each model
through our batching; the whole command (`python -m virnucpro predict --device cpu`, timed
from process start to exit: interpreter, imports, the worker's spawn, torch import and model
load, scoring, outputs), with run.json's stage times; and the original-style baseline
(`baseline.py`), also end to end in a fresh process of its own: torch import, loading the
three models, reading and translating, DNABERT-S one sequence at a time (unmasked),
fair-esm's own ESM2 in its greedy batches of at most 2048 tokens, the classifier, writing
the scores; all fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import virnucpro  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import baseline as B
import common as C
import synthetic as S
import torch
from bench_predict_report import report

TARGETS = {"dnabert_mfu": 0.70, "esm_mfu": 0.60, "forward_share": 0.85, "speedup": 1.25}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=None, help="frames to score [300; quick: 24]")
    p.add_argument("--quick", action="store_true", help="tiny models (for tests)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="DNABERT-S tokenizer.json [default: ../shared/data/dnabert-s]")
    p.add_argument("--threads", type=int, default=None, help="torch threads [all cores]")
    p.add_argument("--no-bf16", action="store_true",
                   help="skip the opt-in bf16 measurements (--precision bf16 on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--input", type=Path, default=None, metavar="FASTA",
                        help="score the frames of this FASTA (e.g. a few real contigs); with "
                        "--frames, its first whole records up to that many frames")
    source.add_argument("--contigs", type=int, default=None, metavar="BP",
                        help="score generated contig-like records of about BP bases in all")
    p.add_argument("--chunk-size", type=int, default=500, help="chunk length, as -m [500]")
    p.add_argument("--baseline-run", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------ setup
def build_models(work: Path, quick: bool, tokenizer: Path | None, seed: int) -> dict[str, Any]:
    """Write the three models in their real formats; the fair-esm .pt stays for the baseline."""
    from virnucpro.models.esm import convert_fair_esm

    dna_shape = C.DNABERT_TINY if quick else C.DNABERT_S
    esm_shape = C.ESM2_TINY if quick else C.ESM2_150M
    tok_path, tok_label = S.dnabert_tokenizer_file(tokenizer, work)
    dnabert = S.build_dnabert(dna_shape, torch.device("cpu"), torch.float32, seed)
    dna_dir = S.write_dnabert_dir(dnabert, dna_shape, work / "dnabert-s", tok_path)
    del dnabert
    S.fair_esm_checkpoint(esm_shape, work / "esm2.pt", seed)
    esm_dir = convert_fair_esm(work / "esm2.pt", work / "esm2")
    classifier = S.write_classifier(work / "classifier.pth", dna_shape.hidden + esm_shape.hidden)
    return {"dnabert_dir": dna_dir, "esm_dir": esm_dir, "classifier": classifier,
            "dna_shape": dna_shape, "esm_shape": esm_shape, "tokenizer": tok_label,
            "esm_pt": work / "esm2.pt"}


def workload(args: argparse.Namespace, n_frames: int, work: Path,
             ) -> tuple[Path, list[Any], str]:
    """The FASTA both sides score, its frames, and what it is (for the report)."""
    chunk = args.chunk_size
    if args.input is None and args.contigs is None:
        records = S.stop_free_records(n_frames, chunk, seed=args.seed)
        frames = S.frames_of(records, chunk)
        while len(frames) > n_frames:  # a record now and then keeps a second frame by chance
            records.pop()
            frames = S.frames_of(records, chunk)
        label = f"random {chunk} bp records, first frame stop-free"
    else:
        from virnucpro.reader import read_records

        records = (list(read_records([str(args.input)])) if args.input else
                   S.contig_like_records(args.contigs, seed=args.seed))
        records = _first_records(records, args.frames, chunk) if args.frames else records
        frames = S.frames_of(records, chunk)
        label = (f"{args.input or 'generated contig-like records'}: {len(records)} records, "
                 f"{sum(len(r.seq) for r in records):,} bp, chunks of {chunk} bp")
    if not frames:
        raise SystemExit(f"bench_predict: the input has no frame to score ({label})")
    return S.write_fasta(records, work / "input.fa"), frames, label


def _first_records(records: list[Any], max_frames: int, chunk: int) -> list[Any]:
    """The first whole records with at most `max_frames` frames in all (at least one)."""
    from virnucpro.frames import iter_record_frames

    kept, n = [], 0
    for rf in iter_record_frames(records, chunk):
        k = sum(map(len, rf.frames))
        if kept and n + k > max_frames:
            break
        kept.append(rf.record)
        n += k
    return kept


# ------------------------------------------------------------------ ours, model level
def measure_models(m: dict[str, Any], frames: list[Any], peak: float,
                   dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Each model as a CPU worker loads and batches it, with the CPU default budgets."""
    from virnucpro.models.dnabert import embed_dnabert, tokenize_dna
    from virnucpro.models.esm import embed_esm, tokenize_protein
    from virnucpro.runtime.cpu import apply_process_settings
    from virnucpro.runtime.devices import DNABERT_BUDGET_DEFAULT, ESM_BUDGET_CPU
    from virnucpro.runtime.worker import Settings, WorkerSpec, load_models

    # This benchmark process plays the worker: it makes the worker's process settings.
    apply_process_settings("cpu", torch.get_num_threads())
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    models = load_models(
        WorkerSpec(dnabert_dir=str(m["dnabert_dir"]), esm_dir=str(m["esm_dir"]),
                   classifier_path=None, device="cpu", threads=torch.get_num_threads()),
        Settings(precision, DNABERT_BUDGET_DEFAULT, ESM_BUDGET_CPU))
    dna_ids = tokenize_dna(models.dna_tokenizer, [f.nucleotide for f in frames])
    dnabert, dna_emb = _measure(embed_dnabert, models.dnabert, dna_ids, DNABERT_BUDGET_DEFAULT,
                                m["dna_shape"], peak)
    prot_ids = tokenize_protein(models.esm_tokenizer, [f.protein for f in frames])
    esm_row, esm_emb = _measure(embed_esm, models.esm, prot_ids, ESM_BUDGET_CPU, m["esm_shape"],
                                peak)
    secs = dnabert["seconds"] + esm_row["seconds"]
    return {"dnabert": dnabert, "esm": esm_row, "frames_per_s": len(frames) / secs,
            "dnabert_emb": dna_emb, "esm_emb": esm_emb,
            "cpu_linears": models.cpu_linears}


def _measure(embed: Any, model: Any, ids: list[list[int]], budget: int, shape: C.Shape,
             peak: float) -> tuple[dict[str, Any], torch.Tensor]:
    timing = C.embed_throughput(lambda b: embed(model, b), ids, budget, torch.device("cpu"),
                                keep=True)
    weights = C.encoder_linear_weights(model)
    row = C.throughput_row(timing, weights, shape, peak)
    return row | {"budget": budget, "linear_weights": weights}, timing["embeddings"]


# ------------------------------------------------------------------ ours, end to end
def measure_e2e(m: dict[str, Any], fasta: Path, out_dir: Path, threads: int, chunk_size: int,
                precision: str = "auto") -> dict[str, Any]:
    """The whole command, `python -m virnucpro predict --device cpu` with default budgets,
    timed from process start to exit; run.json gives its stage times."""
    cmd = [sys.executable, "-m", "virnucpro", "predict", str(fasta), "-o", str(out_dir),
           "-p", str(m["classifier"]), "--chunk-size", str(chunk_size),
           "--dnabert", str(m["dnabert_dir"]), "--esm", str(m["esm_dir"]), "--device", "cpu",
           "--threads", str(threads), "--precision", precision, "--offline", "--no-progress",
           "-q"]
    t0 = time.perf_counter()
    _subprocess(cmd)
    wall = time.perf_counter() - t0
    timing = json.loads((out_dir / "run.json").read_text())["timing"]
    stages = timing["stages"]
    frames = timing["frames_scored_this_run"]
    # The worker is a process of its own: its model time is what run.json records per stage
    # (measured around each stage, synchronised). Start-up: run.json's runs from the start of
    # run_predict until the workers had settled (worker spawn, torch import, model load);
    # before that the command's own process had started and imported.
    forward_s = {k: stages[k]["seconds"] for k in ("dnabert", "esm", "classifier") if k in stages}
    forward = sum(forward_s.values())
    startup = wall - timing["wall_seconds"] + timing["startup_seconds"]
    return {
        "frames": frames, "wall_seconds": wall, "frames_per_s": frames / wall,
        "run_json_wall_seconds": timing["wall_seconds"],
        "startup_seconds": startup, "run_json_startup_seconds": timing["startup_seconds"],
        "forward_seconds": forward_s,
        "forward_share": forward / wall,
        "forward_share_after_startup": forward / (wall - startup),
        "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
        "stage_share": forward / timing["wall_seconds"],
        "frames_per_s_after_startup": frames / (wall - startup),
    }


def _subprocess(cmd: list[str]) -> None:
    """Run a benchmark's child process on this checkout's virnucpro; fail with its stderr."""
    import virnucpro

    env = dict(os.environ)
    src = str(Path(virnucpro.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}:\n"
                           f"{proc.stderr[-3000:]}")


# ------------------------------------------------------------------ original-style baseline
def measure_baseline(m: dict[str, Any], fasta: Path, work: Path, threads: int,
                     chunk_size: int, peak: float) -> dict[str, Any]:
    """The original's way on the same input, end to end in a fresh process (`baseline_run`,
    with glibc's default allocator settings, as the original had them); per-model rows as
    `measure_models` gives them, from the times the process recorded."""
    out = work / "baseline"
    out.mkdir()
    spec = {"dnabert_dir": str(m["dnabert_dir"]), "esm_pt": str(m["esm_pt"]),
            "classifier": str(m["classifier"]), "fasta": str(fasta), "chunk_size": chunk_size,
            "threads": threads, "out": str(out)}
    (out / "spec.json").write_text(json.dumps(spec))
    t0 = time.perf_counter()
    _subprocess([sys.executable, str(Path(__file__).resolve()), "--baseline-run",
                 str(out / "spec.json")])
    wall = time.perf_counter() - t0
    got = json.loads((out / "result.json").read_text())
    embeddings = torch.load(out / "embeddings.pt")
    rows = {key: C.throughput_row(got[key], got[key]["linear_weights"], shape, peak)
            | {"embeddings": embeddings[key]}
            for key, shape in (("dnabert", m["dna_shape"]), ("esm", m["esm_shape"]))}
    phases = got["phases"]
    # Start-up: the interpreter and its imports (before the process's own clock started),
    # then loading the three models.
    startup = wall - got["seconds"] + phases["load"]
    rows["e2e"] = {"frames": got["frames"], "wall_seconds": wall,
                   "frames_per_s": got["frames"] / wall, "startup_seconds": startup,
                   "frames_per_s_after_startup": got["frames"] / (wall - startup),
                   "phases": phases | {"interpreter_and_imports": wall - got["seconds"]}}
    return rows


def baseline_run(spec_path: Path) -> int:
    """The baseline's own process: what the original does with one input, timed by phase."""
    import warnings

    from virnucpro.models.classifier import classify, load_classifier
    from virnucpro.models.dnabert import load_dnabert, load_dnabert_tokenizer
    from virnucpro.reader import read_records
    from virnucpro.render import frame_lines

    spec = json.loads(spec_path.read_text())
    torch.set_num_threads(spec["threads"])
    out, phases = Path(spec["out"]), {}
    t0 = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        phases[name], clock = time.perf_counter() - clock, time.perf_counter()

    dnabert, tok = load_dnabert(spec["dnabert_dir"]), load_dnabert_tokenizer(spec["dnabert_dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fair-esm: no contact-regression weights (unused)
        fair = B.fair_esm(*B.load_fair_esm(spec["esm_pt"]))
    classifier, _ = load_classifier(spec["classifier"])
    lap("load")
    frames = S.frames_of(list(read_records([spec["fasta"]])), spec["chunk_size"])
    lap("read_and_translate")
    dna = B.baseline_dnabert(dnabert, tok, frames)
    lap("dnabert")
    prot = B.baseline_esm(fair, frames)
    lap("esm")
    embeddings = {"dnabert": dna.pop("embeddings"), "esm": prot.pop("embeddings")}
    scores = classify(classifier.eval(), torch.cat([embeddings["dnabert"], embeddings["esm"]],
                                                   dim=1))
    (out / "prediction_results.txt").write_text("".join(frame_lines(frames, scores.numpy())))
    lap("classify_and_write")
    torch.save(embeddings, out / "embeddings.pt")
    (out / "result.json").write_text(json.dumps({
        "frames": len(frames), "phases": phases, "seconds": clock - t0,
        "dnabert": dna, "esm": prot}))
    return 0


# ------------------------------------------------------------------ opt-in bf16
def measure_bf16(m: dict[str, Any], frames: list[Any], fasta: Path, work: Path,
                 r: dict[str, Any]) -> dict[str, Any]:
    """The same, with `--precision bf16` (opt-in on a CPU): speed, and how far it moves
    the embeddings and the calls from fp32."""
    cpu = torch.device("cpu")
    peak = C.matmul_peak(cpu, torch.bfloat16, (256, 384) if r["quick"] else (2048, 3072),
                         repeats=3 if r["quick"] else 6)
    models = measure_models(m, frames, peak["flops"], torch.bfloat16)
    e2e = measure_e2e(m, fasta, work / "predict-bf16", torch.get_num_threads(), r["chunk_size"],
                      "bf16")
    return {"peak": peak, "models": models, "e2e": e2e,
            "agreement": {k: C.agreement(r["models"][f"{k}_emb"], models[f"{k}_emb"])
                          for k in ("dnabert", "esm")},
            "calls": S.call_agreement(
                torch.cat([r["models"]["dnabert_emb"], r["models"]["esm_emb"]], dim=1),
                torch.cat([models["dnabert_emb"], models["esm_emb"]], dim=1))}


def summarise(r: dict[str, Any]) -> None:
    """Frame rates, speedups and the targets, from the measurements in `r`."""
    base, ours, n = r["baseline"], r["models"], r["frames"]
    base["seconds"] = base["dnabert"]["seconds"] + base["esm"]["seconds"]
    base["robust_seconds"] = base["dnabert"]["robust_seconds"] + base["esm"]["robust_seconds"]
    base["frames_per_s"] = n / base["seconds"]
    base["frames_per_s_robust"] = n / base["robust_seconds"]
    ours_robust = ours["dnabert"]["robust_seconds"] + ours["esm"]["robust_seconds"]
    e, b = r["e2e"], base["e2e"]
    # Both sides score the same frames, each as a whole process, measured in this run.
    r["speedup"] = b["wall_seconds"] / e["wall_seconds"]
    r["speedup_after_startup"] = ((b["wall_seconds"] - b["startup_seconds"])
                                  / (e["wall_seconds"] - e["startup_seconds"]))
    r["speedup_models"] = base["seconds"] / (ours["dnabert"]["seconds"] + ours["esm"]["seconds"])
    r["speedup_robust"] = base["robust_seconds"] / ours_robust
    r["agreement"] = {k: C.agreement(base[k]["embeddings"], ours[f"{k}_emb"])
                      for k in ("dnabert", "esm")}
    if "bf16" in r:
        r["bf16"]["speedup"] = b["wall_seconds"] / r["bf16"]["e2e"]["wall_seconds"]
    r["targets"] = {
        name: {"value": value, "target": TARGETS[name.removesuffix("_robust")],
               "met": value >= TARGETS[name.removesuffix("_robust")]}
        for name, value in (("dnabert_mfu", ours["dnabert"]["mfu_median"]),
                            ("esm_mfu", ours["esm"]["mfu_median"]),
                            ("forward_share", e["forward_share"]),
                            ("speedup", r["speedup"]),
                            ("speedup_robust", r["speedup_robust"]))}


def measure_all(args: argparse.Namespace, r: dict[str, Any], work: Path) -> None:
    """Every measurement, into `r`; each phase notes how busy the other cores were."""
    peak = r["peak"]["flops"]
    threads = torch.get_num_threads()
    m = build_models(work, args.quick, args.tokenizer, args.seed)
    r |= {"tokenizer": m["tokenizer"], "dna_shape": m["dna_shape"].name,
          "esm_shape": m["esm_shape"].name, "chunk_size": args.chunk_size}
    fasta, frames, r["workload"] = workload(args, args.frames or (24 if args.quick else 300),
                                            work)
    r["frames"] = len(frames)
    print(f"[bench_predict] {len(frames)} frames of {r['workload']}; models in {work}",
          file=sys.stderr)
    r["other_load"] = {}
    phases = {"baseline": lambda: measure_baseline(m, fasta, work, threads, args.chunk_size,
                                                   peak),
              "models": lambda: measure_models(m, frames, peak),
              "e2e": lambda: measure_e2e(m, fasta, work / "predict", threads, args.chunk_size)}
    if not args.no_bf16:
        phases["bf16"] = lambda: measure_bf16(m, frames, fasta, work, r)
    for name, measure in phases.items():
        with C.OtherLoad() as load:
            r[name] = measure()
        r["other_load"][name] = load.as_dict()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_run:
        return baseline_run(args.baseline_run)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    r: dict[str, Any] = {"quick": args.quick, "hardware": C.hardware_info(cpu)}
    sizes = (256, 384) if args.quick else (2048, 3072, 4096)
    r["peak"] = C.matmul_peak(cpu, torch.float32, sizes, repeats=3 if args.quick else 6)
    r["peak"]["sustained_flops"] = C.sustained_matmul(
        cpu, torch.float32, 256 if args.quick else 2048, 0.5 if args.quick else 8.0,
        kernel=r["peak"]["kernel"])
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        measure_all(args, r, Path(tmp))
    summarise(r)
    r["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report(r)
    if args.json:
        args.json.write_text(json.dumps(C.to_json(r), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
