"""Command line. Heavy libraries (torch, transformers) are imported inside commands,
so `virnucpro --help` and `virnucpro translate` stay fast and torch-free."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from virnucpro import __version__
from virnucpro.errors import VirnucproError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="virnucpro")
def cli() -> None:
    """Find viral sequences in DNA reads or contigs (VirNucPro-compatible)."""


# --------------------------------------------------------------------- translate
@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the output files (created if missing).")
@click.option("--chunk-size", default=500, show_default=True, type=click.IntRange(min=1),
              help="Chunk length in bp (300 or 500 for the published models).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def translate(inputs: tuple[str, ...], output_dir: Path, chunk_size: int, force: bool) -> None:
    """Chunk INPUTS (FASTA/FASTQ, plain or gzip, '-' for stdin) and write the stop-free
    six-frame translations exactly as the original VirNucPro does."""
    from virnucpro.translate import run_translate

    summary = run_translate(list(inputs), output_dir, chunk_size=chunk_size, force=force)
    click.echo(f"virnucpro: {summary.sequences} sequences, {summary.chunks} chunks, "
               f"{summary.frames} frames kept, {summary.skipped} skipped; "
               f"outputs in {output_dir}", err=True)


# ---------------------------------------------------------------------- selftest
@cli.command()
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the tiny models and outputs in this directory.")
def selftest(keep: Path | None) -> int:
    """Run the whole pipeline on the bundled example with tiny random models (no download)."""
    from virnucpro.selftest import run_selftest

    checks = run_selftest(keep, say=lambda m: click.echo(m, err=True))
    for c in checks:
        mark = click.style("ok  ", fg="green") if c.ok else click.style("FAIL", fg="red")
        click.echo(f"{mark} {c.name}" + (f" ({c.detail})" if c.detail else ""))
    failed = [c for c in checks if not c.ok]
    click.echo(f"selftest: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


# ----------------------------------------------------------------------- predict
def _setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr: through rich on a terminal; one plain line per message otherwise (a
    file or a pipe gets no wrapping and no padding). `main` restores the caller's logging."""
    import logging

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=_stderr_console(), show_path=False,
                                               show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _stderr_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


def _shard_option(_ctx: click.Context, _param: click.Parameter,
                  value: str | None) -> tuple[int, int] | None:
    from virnucpro.shards import parse_shard

    try:
        return None if value is None else parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_EMBEDDING_OPTIONS = [
    click.option("--dnabert", metavar="ID_OR_DIR", default="zhihan1996/DNABERT-S",
                 show_default=True,
                 help="DNABERT-S hub id (owner/name[@revision]) or local directory."),
    click.option("--esm", metavar="ID_OR_DIR", default="facebook/esm2_t36_3B_UR50D",
                 show_default=True,
                 help="ESM-2 hub id (owner/name[@revision]) or local directory."),
    click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Where downloaded models live [default: ~/.cache/virnucpro]."),
    click.option("--device", default="auto", show_default=True,
                 help="auto, cpu, cuda or cuda:N (auto: every visible GPU, else the CPU)."),
    click.option("--gpus", default=None, metavar="0,1,...", help="CUDA devices to use."),
    click.option("--workers", type=click.IntRange(min=1), default=None,
                 help="Worker processes [default: one per selected GPU, or 1 on CPU]."),
    click.option("--dnabert-batch-size", "dnabert_budget", type=click.IntRange(min=1),
                 default=None, metavar="TOKENS",
                 help="DNABERT-S tokens per batch [default: 2048, or 3072 in bf16]."),
    click.option("--esm-batch-size", "esm_budget", type=click.IntRange(min=1), default=None,
                 metavar="TOKENS", help="ESM-2 tokens per batch [default: 4096 on CPU; on a "
                                        "GPU, from its free memory, see the README]."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                 default="auto", show_default=True,
                 help="auto: fp32 on CPU, bf16 on GPUs with compute capability >= 8, else "
                      "fp16."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="CPU threads per worker [default: cores / workers on CPU]."),
    click.option("--unit-frames", type=click.IntRange(min=1), default=2048, show_default=True,
                 help="Frames per work unit (the unit of scheduling, resume and caching)."),
    click.option("--offline", is_flag=True,
                 help="Never download; fail at once if a model is missing (also: "
                      "HF_HUB_OFFLINE=1)."),
    click.option("--no-progress", is_flag=True, help="No live progress display."),
    click.option("-v", "--verbose", count=True, help="More log messages."),
    click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
]


def _embedding_options(command):  # type: ignore[no-untyped-def]
    """The options every command that runs the embedding workers shares (predict, train)."""
    for option in reversed(_EMBEDDING_OPTIONS):
        command = option(command)
    return command


def _runtime(opts: dict, **extra: Any):  # type: ignore[no-untyped-def,type-arg]
    """The shared options as the one RuntimeConfig; sets up logging on the way."""
    from virnucpro.runtime.plan import RuntimeConfig

    verbose, quiet, no_progress = opts.pop("verbose"), opts.pop("quiet"), opts.pop("no_progress")
    _setup_logging(verbose, quiet)
    return RuntimeConfig(**{**opts, "offline": _offline(opts["offline"]),
                            "progress": not (no_progress or quiet) and sys.stderr.isatty(),
                            **extra})


def _command_line() -> tuple[str, ...]:
    return ("virnucpro", *click.get_current_context().obj["argv"])


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for all outputs (created if missing).")
@click.option("-m", "--model-type", type=click.Choice(["300", "500"]), default="500",
              show_default=True, help="Published model: sets the chunk size and classifier.")
@click.option("-p", "--model-path", type=click.Path(path_type=Path), default=None,
              help="Classifier: an original .pth or a converted/trained directory.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Chunk length in bp [default: the model type].")
@_embedding_options
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Sequences with virus_score >= threshold are called virus.")
@click.option("--resume", is_flag=True,
              help="Continue an unfinished run (the default when OUTPUT_DIR holds one).")
@click.option("--force", is_flag=True, help="Replace whatever run OUTPUT_DIR holds.")
@click.option("--save-embeddings", is_flag=True,
              help="Also write each frame's [DNABERT-S | ESM-2] features to "
                   "OUTPUT_DIR/embeddings/.")
@click.option("--shard", metavar="I/N", default=None, callback=_shard_option,
              help="Score only shard I of N (1 <= I <= N): for job arrays; `virnucpro merge` "
                   "joins the N output directories.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: workers on this machine; ray: a Ray Data pipeline (needs "
                   "pip install 'virnucpro[ray]'). Both write the same bytes.")
@click.option("--ray-address", metavar="auto|HOST:PORT", default=None,
              help="Ray cluster to join with --engine ray [default: start a local Ray].")
def predict(inputs: tuple[str, ...], output_dir: Path, model_type: str, model_path: Path | None,
            chunk_size: int | None, threshold: float, resume: bool, force: bool,
            save_embeddings: bool, shard: tuple[int, int] | None, engine: str,
            ray_address: str | None, **embedding: Any) -> None:
    """Score INPUTS (FASTA/FASTQ, plain or gzip, '-' for stdin) and write per-frame,
    per-chunk and per-sequence verdicts to OUTPUT_DIR."""
    from virnucpro.predict import PredictConfig, run_predict

    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    cfg = PredictConfig(
        inputs=inputs, output_dir=output_dir, model_type=int(model_type), chunk_size=chunk_size,
        classifier=str(model_path) if model_path else None, threshold=threshold,
        resume=resume, force=force, save_embeddings=save_embeddings, shard=shard,
        runtime=_runtime(embedding, engine=engine, ray_address=ray_address),
        command_line=_command_line())
    run_predict(cfg)


# ------------------------------------------------------------------------- merge
@cli.command()
@click.argument("shard_dirs", nargs=-1, required=True, metavar="SHARD_DIR...",
                type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the merged outputs (created if missing).")
@click.option("--force", is_flag=True, help="Overwrite outputs OUTPUT_DIR already holds.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def merge(shard_dirs: tuple[Path, ...], output_dir: Path, force: bool, quiet: bool) -> None:
    """Join the output directories of `predict --shard I/N` (all N shards of one run) into
    exactly the files one run writes. Reads the original inputs again; runs no model."""
    from virnucpro.shards import merge_shards

    _setup_logging(0, quiet)
    merge_shards(shard_dirs, output_dir, force=force, command_line=_command_line())


# ------------------------------------------------------------------------- train
@cli.command()
@click.option("--viral", "viral", multiple=True, required=True, metavar="FASTA",
              help="Viral sequences (FASTA/FASTQ, plain or gzip); repeat for more files.")
@click.option("--other", "other", multiple=True, required=True, metavar="FASTA",
              help="Non-viral sequences (host, bacteria, ...); repeat for more files.")
@click.option("-o", "--output-dir", "model_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="MODEL_DIR for the classifier (use it with predict -p MODEL_DIR).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Chunk length in bp (predict -p MODEL_DIR then uses the same).")
@click.option("--cds-proteins", multiple=True, metavar="FAA",
              help="Keep only frames whose protein lies inside one of these proteins "
                   "(known CDS translations, as the original's training set); repeatable.")
@click.option("--features-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Embedding cache, shared between runs [default: MODEL_DIR/features].")
@click.option("--hidden-dim", type=click.IntRange(min=1), default=512, show_default=True,
              help="MLP hidden units.")
@click.option("--batchnorm/--no-batchnorm", default=True, show_default=True,
              help="BatchNorm after the hidden layer.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5,
              show_default=True, help="Dropout after the hidden layer.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=2e-4, show_default=True,
              help="SGD learning rate.")
@click.option("--momentum", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="SGD momentum.")
@click.option("--lr-step", type=click.IntRange(min=1), default=10, show_default=True,
              help="StepLR: epochs between learning-rate decays.")
@click.option("--lr-gamma", type=click.FloatRange(0, 1, min_open=True), default=0.85,
              show_default=True, help="StepLR: decay factor.")
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Frames per training batch.")
@click.option("--patience", type=click.IntRange(min=1), default=5, show_default=True,
              help="Early stopping: epochs without a lower validation loss.")
@click.option("--max-epochs", type=click.IntRange(min=1), default=200, show_default=True,
              help="Stop after this many epochs at most.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.1, show_default=True, help="Share of frames held out for validation.")
@click.option("--split-by", type=click.Choice(["frame", "sequence"]), default="frame",
              show_default=True, help="Hold out random frames (the original) or whole "
                                      "sequences (no sequence on both sides).")
@click.option("--seed", type=int, default=42, show_default=True,
              help="Seed for class balancing, the split, initialisation and shuffling.")
@click.option("--force", is_flag=True, help="Replace a classifier MODEL_DIR already holds.")
@_embedding_options
def train(viral: tuple[str, ...], other: tuple[str, ...], model_dir: Path, chunk_size: int,
          cds_proteins: tuple[str, ...], features_dir: Path | None, hidden_dim: int,
          batchnorm: bool, dropout: float, lr: float, momentum: float, lr_step: int,
          lr_gamma: float, batch_size: int, patience: int, max_epochs: int,
          val_fraction: float, split_by: str, seed: int, force: bool,
          **embedding: Any) -> None:
    """Train a classifier on --viral and --other sequences, chunked and embedded as predict
    does; writes MODEL_DIR/model.safetensors, classifier.json and history.tsv."""
    from virnucpro.fit import Recipe
    from virnucpro.train import TrainConfig, run_train

    recipe = Recipe(hidden_dim=hidden_dim, batchnorm=batchnorm, dropout=dropout, lr=lr,
                    momentum=momentum, lr_step=lr_step, lr_gamma=lr_gamma,
                    batch_size=batch_size, patience=patience, max_epochs=max_epochs,
                    val_fraction=val_fraction, split_by=split_by, seed=seed)
    cfg = TrainConfig(viral=viral, other=other, model_dir=model_dir, chunk_size=chunk_size,
                      cds_proteins=cds_proteins, recipe=recipe, features_dir=features_dir,
                      force=force, runtime=_runtime(embedding), command_line=_command_line())
    run_train(cfg)


# ---------------------------------------------------------------------- evaluate
@cli.command()
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="LABELS.tsv", help="seq_id<TAB>label per line, label virus or other "
                                         "(header optional).")
@click.option("--viral", multiple=True, metavar="FASTA",
              help="Instead of --truth: every record of this file is viral; repeatable.")
@click.option("--other", multiple=True, metavar="FASTA",
              help="Instead of --truth: every record of this file is not viral; repeatable.")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where metrics.json, roc.png and pr.png go [default: PRED_DIR].")
def evaluate(pred_dir: Path, truth: Path | None, viral: tuple[str, ...],
             other: tuple[str, ...], output_dir: Path | None) -> None:
    """Compare a predict output in PRED_DIR with known labels: accuracy, precision, recall,
    F1, AUROC, AUPRC and confusion matrix per frame, chunk and sequence."""
    from virnucpro.errors import InputError
    from virnucpro.evaluate import labels_from_fasta, read_labels, run_evaluate

    if (truth is None) == (not viral and not other):
        raise InputError("give either --truth LABELS.tsv or --viral/--other FASTA files")
    labels = read_labels(truth) if truth else labels_from_fasta(viral, other)
    source = str(truth) if truth else f"--viral {' '.join(viral)} --other {' '.join(other)}"
    record = run_evaluate(pred_dir, labels, output_dir, truth_source=source)
    for level, m in record["levels"].items():
        fmt = {k: "n/a" if m[k] is None else f"{m[k]:.4f}"
               for k in ("accuracy", "precision", "recall", "f1", "auroc", "auprc")}
        click.echo(f"{level:>8}: n={m['n']} accuracy {fmt['accuracy']} precision "
                   f"{fmt['precision']} recall {fmt['recall']} F1 {fmt['f1']} AUROC "
                   f"{fmt['auroc']} AUPRC {fmt['auprc']}")
    click.echo(f"metrics written to {output_dir or pred_dir}", err=True)


# -------------------------------------------------------------------------- plot
@cli.command()
@click.argument("pred_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where the figures go [default: PRED_DIR].")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Score tracks for this many sequences, highest virus_score first.")
@click.option("--seq-id", "seq_ids", multiple=True, metavar="ID",
              help="Plot the tracks of these sequences instead; repeatable.")
@click.option("--html", "html_page", is_flag=True,
              help="Also write plots.html, one page embedding the figures.")
def plot(pred_dir: Path, output_dir: Path | None, top: int, seq_ids: tuple[str, ...],
         html_page: bool) -> None:
    """Draw a predict output in PRED_DIR: chunk scores along the top sequences
    (score_tracks.png) and the histogram of sequence scores (score_histogram.png)."""
    from virnucpro.plot import run_plot

    written = run_plot(pred_dir, output_dir, top=top, seq_ids=seq_ids, html_page=html_page)
    click.echo(f"wrote {', '.join(str(p) for p in written.values())}", err=True)


# ------------------------------------------------------------------------ models
@cli.group()
def models() -> None:
    """Download, inspect and convert models."""


@models.command("convert-esm")
@click.argument("pt_file", metavar="FILE.pt", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
def models_convert_esm(pt_file: Path, out_dir: Path) -> None:
    """Convert a fair-esm ESM-2 checkpoint FILE.pt into a Hugging Face model directory DIR.
    The file is read without running any code from it."""
    from virnucpro.models.esm import convert_fair_esm

    click.echo(f"ESM-2 model written to {convert_fair_esm(pt_file, out_dir)}")


@models.command("convert-classifier")
@click.argument("in_path", metavar="IN.pth", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(file_okay=False, path_type=Path))
def models_convert_classifier(in_path: Path, out: Path) -> None:
    """Convert a published classifier IN.pth into OUT/ (model.safetensors + classifier.json).
    The pickle is read without running any code from it."""
    from virnucpro.models.classifier import convert_classifier

    click.echo(f"classifier written to {convert_classifier(in_path, out)}")


def _offline(flag: bool) -> bool:
    """--offline, or HF_HUB_OFFLINE set the way huggingface_hub reads it (read here only)."""
    from virnucpro.models.store import env_says_offline

    return flag or env_says_offline(os.environ.get("HF_HUB_OFFLINE"))


_MODELS_DIR_HELP = "Where downloaded models and manifest.json live [default: ~/.cache/virnucpro]."


@models.command("download")
@click.option("--model-type", type=click.Choice(["300", "500", "all"]), default="all",
              show_default=True, help="Which published classifier(s) to fetch.")
@click.option("--dest", "--models-dir", "dest", type=click.Path(file_okay=False, path_type=Path),
              help=_MODELS_DIR_HELP)
def models_download(model_type: str, dest: Path | None) -> None:
    """Download DNABERT-S, ESM-2 3B and the published classifier(s), and record the revision
    and sha256 of every file in DEST/manifest.json."""
    from virnucpro.errors import ModelError
    from virnucpro.models.store import download_models

    if _offline(False):
        raise ModelError("HF_HUB_OFFLINE is set: unset it to download models")
    manifest = download_models(model_type, dest, progress=True)
    click.echo(f"models recorded in {manifest}")


@models.command("info")
@click.option("-m", "--model-type", type=click.Choice(["300", "500"]), default="500",
              show_default=True, help="Published model: sets the classifier.")
@click.option("-p", "--model-path", type=click.Path(path_type=Path), default=None,
              help="Classifier: an original .pth or a converted/trained directory.")
@click.option("--dnabert", metavar="ID_OR_DIR", default="zhihan1996/DNABERT-S", show_default=True,
              help="DNABERT-S hub id (owner/name[@revision]) or local directory.")
@click.option("--esm", metavar="ID_OR_DIR", default="facebook/esm2_t36_3B_UR50D",
              show_default=True, help="ESM-2 hub id (owner/name[@revision]) or local directory.")
@click.option("--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=_MODELS_DIR_HELP)
@click.option("--offline", is_flag=True, help="A run would not download (also: HF_HUB_OFFLINE=1).")
@click.option("--verify", is_flag=True, help="Re-hash every file against the manifest.")
@click.pass_context
def models_info(ctx: click.Context, model_type: str, model_path: Path | None, dnabert: str,
                esm: str, models_dir: Path | None, offline: bool, verify: bool) -> None:
    """Show the models a run would use: paths, revisions, sizes, parameters, dimensions.
    Never downloads; exits 1 if a run could not load one of them."""
    from virnucpro.models import info

    rows = info.models_info(dnabert=dnabert, esm=esm, classifier=model_path,
                           model_type=int(model_type), models_dir=models_dir,
                           offline=_offline(offline), verify=verify)
    click.echo(info.format_models_info(rows))
    if any(r["status"] in ("missing", "error") for r in rows):
        ctx.exit(1)


# ----------------------------------------------------------------------- entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors become one line on stderr."""
    import logging

    args = list(sys.argv[1:] if argv is None else argv)
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    try:
        rv = cli.main(args=args, prog_name="virnucpro", standalone_mode=False,
                     obj={"argv": args})
    except click.exceptions.Abort:
        click.echo("virnucpro: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except VirnucproError as exc:
        click.echo(f"virnucpro: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("virnucpro: interrupted", err=True)
        return 130
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
