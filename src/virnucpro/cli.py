"""Command line. Heavy libraries (torch, transformers) are imported inside commands,
so `virnucpro --help` and `virnucpro translate` stay fast and torch-free."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import rich_click as click

from virnucpro import __version__
from virnucpro.cli_common import command_line as _command_line
from virnucpro.cli_common import setup_logging as _setup_logging
from virnucpro.cli_models import models
from virnucpro.cli_run import predict, train
from virnucpro.errors import VirnucproError

# Our own help settings instead of rich-click's module globals, which another library in the
# same process may have set (`import multiqc` sets three deprecated ones): --help looks the
# same whatever the caller imported, and no call warns about settings we never made.
HELP_CONFIG = click.RichHelpConfiguration()


@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "rich_help_config": HELP_CONFIG})
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
    from virnucpro.evaluate import labels_from_fasta, read_labels, run_evaluate, summary_lines

    if (truth is None) == (not viral and not other):
        raise InputError("give either --truth LABELS.tsv or --viral/--other FASTA files")
    labels = read_labels(truth) if truth else labels_from_fasta(viral, other)
    source = str(truth) if truth else f"--viral {' '.join(viral)} --other {' '.join(other)}"
    record = run_evaluate(pred_dir, labels, output_dir, truth_source=source)
    for line in summary_lines(record):
        click.echo(line)
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
    """Draw a predict output in PRED_DIR: chunk scores and viral regions along the top
    sequences (score_tracks.png) and the histogram of sequence scores (score_histogram.png)."""
    from virnucpro.plot import run_plot

    written = run_plot(pred_dir, output_dir, top=top, seq_ids=seq_ids, html_page=html_page,
                       say=lambda note: click.echo(f"virnucpro: {note}", err=True))
    click.echo(f"wrote {', '.join(str(p) for p in written.values())}", err=True)


cli.add_command(predict)
cli.add_command(train)
cli.add_command(models)


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
    except click.exceptions.Abort as exc:  # click's form of Ctrl-C, and of our SIGTERM
        if isinstance(exc.__cause__ or exc.__context__, Terminated):
            return _terminated()
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
    except OSError as exc:  # what no layer below named: still one line, with the path
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"virnucpro: error: {where}{exc.strerror or exc}", err=True)
        return 1
    except Terminated:
        return _terminated()
    except KeyboardInterrupt:
        click.echo("virnucpro: interrupted", err=True)
        return 130
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
    return rv if isinstance(rv, int) else 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, as batch schedulers send it at a job's time limit: it unwinds the run like
    Ctrl-C (workers stopped, saved units kept), and `main` says how to resume."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _terminated() -> int:
    click.echo("virnucpro: stopped by SIGTERM (a time limit?); nothing saved is lost: run the "
               "same command again to resume", err=True)
    return 143


def run() -> None:
    """Console-script entry point (`virnucpro`, `python -m virnucpro`): this process is ours,
    so it turns SIGTERM into a clean stop; `main` called from a program leaves the caller's
    signal handling alone."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
