"""What the CLI modules share: logging set-up, the offline switch, the command line."""

from __future__ import annotations

import os
import sys

import rich_click as click


def setup_logging(verbose: int, quiet: bool) -> None:
    """Log to stderr: through rich on a terminal; one plain line per message otherwise (a
    file or a pipe gets no wrapping and no padding). `cli.main` restores the caller's
    logging afterwards."""
    import logging

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=Console(stderr=True), show_path=False,
                                               show_time=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                               "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def offline(flag: bool) -> bool:
    """--offline, or HF_HUB_OFFLINE set the way huggingface_hub reads it (read here only)."""
    from virnucpro.models.store import env_says_offline

    return flag or env_says_offline(os.environ.get("HF_HUB_OFFLINE"))


def command_line() -> tuple[str, ...]:
    """The command as the user typed it, for run.json."""
    return ("virnucpro", *click.get_current_context().obj["argv"])
