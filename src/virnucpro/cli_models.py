"""`virnucpro models ...`: download, inspect and convert models."""

from __future__ import annotations

from pathlib import Path

import rich_click as click

from virnucpro.cli_common import offline as _offline


# ------------------------------------------------------------------------ models
@click.group()
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
