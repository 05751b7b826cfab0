"""`virnucpro predict` and `virnucpro train`: the commands that run the embedding workers,
with the options they share, in panels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import rich_click as click

from virnucpro.cli_common import command_line as _command_line
from virnucpro.cli_common import offline as _offline
from virnucpro.cli_common import setup_logging as _setup_logging


def _shard_option(_ctx: click.Context, _param: click.Parameter,
                  value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    from virnucpro.shards import parse_shard  # imports torch (via predict): only when asked

    try:
        return parse_shard(value)
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
                 help="DNABERT-S tokens per batch [default: 2048 on CPU, 3072 in bf16; on a "
                      "GPU, from its free memory, see the README]."),
    click.option("--esm-batch-size", "esm_budget", type=click.IntRange(min=1), default=None,
                 metavar="TOKENS", help="ESM-2 tokens per batch [default: 4096 on CPU; on a "
                                        "GPU, from its free memory, see the README]."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
                 default="auto", show_default=True,
                 help="auto: fp32 on CPU, bf16 on GPUs with compute capability >= 8, else "
                      "fp16."),
    click.option("--compile/--no-compile", "compile", default=None,
                 help="Compile the models' layers with torch.compile (start-up pays for it "
                      "once; see the README) [default: on GPUs, not on CPU]."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="CPU threads per worker [default: the CPUs this process may use "
                      "(affinity, cgroup quota), split among the workers]."),
    click.option("--unit-frames", type=click.IntRange(min=1), default=2048, show_default=True,
                 help="Frames per work unit (the unit of scheduling, resume and caching)."),
    click.option("--offline", is_flag=True,
                 help="Never download; fail at once if a model is missing (also: "
                      "HF_HUB_OFFLINE=1)."),
    click.option("--no-progress", is_flag=True, help="No live progress display."),
    # count=True gives the option an IntRange type, which --help would show as a metavar
    # ("INTEGER RANGE"); an empty metavar shows it as the flag it is (-v, -vv).
    click.option("-v", "--verbose", count=True, metavar="", help="More log messages."),
    click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors."),
]


def _embedding_options(command):  # type: ignore[no-untyped-def]
    """The options every command that runs the embedding workers shares (predict, train)."""
    for option in reversed(_EMBEDDING_OPTIONS):
        command = option(command)
    return command


def _panels(*run_control: str):  # type: ignore[no-untyped-def]
    """The shared option panels of --help (models, devices and batching, run control)."""
    panels = [
        click.option_panel("Models", options=["--dnabert", "--esm", "--models-dir",
                                              "--offline"]),
        click.option_panel("Devices and batching", options=[
            "--device", "--gpus", "--workers", "--precision", "--dnabert-batch-size",
            "--esm-batch-size", "--compile", "--threads", "--unit-frames"]),
        click.option_panel("Run control", options=[*run_control, "--no-progress", "--verbose",
                                                   "--quiet"]),
    ]

    def apply(command):  # type: ignore[no-untyped-def]
        for panel in reversed(panels):
            command = panel(command)
        return command
    return apply


def _runtime(opts: dict, **extra: Any):  # type: ignore[no-untyped-def,type-arg]
    """The shared options as the one RuntimeConfig; sets up logging on the way."""
    from virnucpro.runtime.plan import RuntimeConfig

    verbose, quiet, no_progress = opts.pop("verbose"), opts.pop("quiet"), opts.pop("no_progress")
    _setup_logging(verbose, quiet)
    return RuntimeConfig(**{**opts, "offline": _offline(opts["offline"]),
                            "progress": not (no_progress or quiet) and sys.stderr.isatty(),
                            **extra})


def _early_checks(inputs: list[str], models: dict[str, Any]) -> None:
    """What can be checked in well under a second, before torch is imported or any output
    or worker exists: every input can be opened, and every local model argument is the kind
    of model its option takes (swapped --dnabert and --esm, an ESM-2 directory given to -p)."""
    from virnucpro.models.store import check_model_kind
    from virnucpro.reader import check_inputs

    check_inputs(inputs)
    for kind, spec in models.items():
        if spec is not None and Path(spec).expanduser().exists():
            check_model_kind(Path(spec).expanduser(), kind)


@click.command()
@click.option_panel("Inputs and outputs", options=[
    "inputs", "--output-dir", "--model-type", "--model-path", "--chunk-size"])
@click.option_panel("Calls", options=["--threshold", "--min-region-length",
                                      "--region-switch-prob"])
@_panels("--resume", "--force", "--save-embeddings", "--shard", "--engine", "--ray-address")
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
              help="Sequences with virus_score >= threshold are called virus. Changing only "
                   "this on a finished run rewrites the verdicts from its saved scores.")
@click.option("--min-region-length", type=click.IntRange(min=0), default=1000,
              show_default=True, metavar="BP",
              help="Shortest viral region inside a longer sequence reported in regions.tsv.")
@click.option("--region-switch-prob", type=click.FloatRange(0, 0.5, min_open=True,
                                                            max_open=True),
              default=1e-3, show_default=True, metavar="P",
              help="Regions: chance of a virus/host switch between chunks; smaller gives "
                   "fewer, longer regions.")
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
              help="local: worker processes on this machine; ray: Ray actors anywhere in a "
                   "cluster (needs pip install 'virnucpro[ray]'). Both write the same bytes.")
@click.option("--ray-address", metavar="auto|HOST:PORT", default=None,
              help="Ray cluster to join with --engine ray [default: start a local Ray].")
def predict(inputs: tuple[str, ...], output_dir: Path, model_type: str, model_path: Path | None,
            chunk_size: int | None, threshold: float, min_region_length: int,
            region_switch_prob: float, resume: bool, force: bool, save_embeddings: bool,
            shard: tuple[int, int] | None, engine: str, ray_address: str | None,
            **embedding: Any) -> None:
    """Score INPUTS (FASTA/FASTQ, plain or gzip, '-' for stdin) and write per-frame,
    per-chunk, per-sequence and per-region verdicts to OUTPUT_DIR.

    \b
    Examples:
      virnucpro predict reads.fastq.gz -o results/              # all GPUs, else the CPU
      virnucpro predict contigs.fa -o out/ -m 300 --gpus 0,1
      virnucpro predict contigs.fa -o out/ --threshold 0.7      # re-threshold a finished run
      virnucpro predict in.fa -o out/ --dnabert DIR --esm DIR -p MODEL_DIR --offline
    """
    if ray_address is not None and engine != "ray":
        raise click.UsageError("--ray-address needs --engine ray")
    _early_checks(list(inputs), {"dnabert": embedding["dnabert"], "esm": embedding["esm"],
                                 "classifier": model_path})
    from virnucpro.predict import PredictConfig, run_predict
    from virnucpro.regions import RegionParams

    cfg = PredictConfig(
        inputs=inputs, output_dir=output_dir, model_type=int(model_type), chunk_size=chunk_size,
        classifier=str(model_path) if model_path else None, threshold=threshold,
        regions=RegionParams(min_region_length, region_switch_prob), resume=resume,
        force=force, save_embeddings=save_embeddings, shard=shard,
        runtime=_runtime(embedding, engine=engine, ray_address=ray_address),
        command_line=_command_line())
    run_predict(cfg)


# ------------------------------------------------------------------------- train
@click.command()
@click.option_panel("Inputs and outputs", options=[
    "--viral", "--other", "--output-dir", "--chunk-size", "--cds-proteins", "--features-dir",
    "--force"])
@click.option_panel("Training recipe (defaults: the original's)", options=[
    "--hidden-dim", "--batchnorm", "--dropout", "--lr", "--momentum", "--lr-step",
    "--lr-gamma", "--batch-size", "--patience", "--max-epochs", "--val-fraction", "--split-by",
    "--seed"])
@_panels()
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
    does; writes MODEL_DIR/model.safetensors, classifier.json and history.tsv.

    \b
    Example:
      virnucpro train --viral phages.fa --other bacteria.fa -o my_model/ --chunk-size 300
      virnucpro predict contigs.fa -o out/ -p my_model/
    """
    _early_checks([*viral, *other, *cds_proteins],
                  {"dnabert": embedding["dnabert"], "esm": embedding["esm"]})
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
