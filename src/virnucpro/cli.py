"""Command line. Heavy libraries (torch, transformers) are imported inside commands,
so `virnucpro --help` and `virnucpro translate` stay fast and torch-free."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

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
    from virnucpro.pipeline import run_translate

    run_translate(list(inputs), output_dir, chunk_size=chunk_size, force=force)


# ------------------------------------------------------------------------ models
@cli.group()
def models() -> None:
    """Download, inspect and convert models."""


# ----------------------------------------------------------------------- entry
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code; errors become one line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=args, prog_name="virnucpro", standalone_mode=False)
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
    return rv if isinstance(rv, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
