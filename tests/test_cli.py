"""cli.py: the CLI keeps its own help settings, whatever else the caller's process imported."""

from __future__ import annotations

import warnings

import rich_click

from virnucpro.cli import main


def _calls(capsys) -> list[tuple[int, str, str]]:
    runs = []
    for args in (["predict", "--help"], ["translate", "--bogus"], ["models", "info", "--x"],
                 ["evaluate", "--help"]):
        runs.append((main(args), *capsys.readouterr()))
    return runs


def test_rich_click_globals_set_by_another_library_change_nothing(monkeypatch, capsys):
    """`import multiqc` sets three deprecated rich-click globals; afterwards every CLI call
    warned (about 400 PendingDeprecationWarnings in a test session) and --help dropped its
    metavar column. Now: no warning, and the same text as without them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = _calls(capsys)
        for name, value in (("USE_RICH_MARKUP", True), ("SHOW_METAVARS_COLUMN", False),
                            ("APPEND_METAVARS_HELP", True)):  # multiqc/multiqc.py, lines 37-39
            monkeypatch.setattr(rich_click.rich_click, name, value)
        assert _calls(capsys) == clean
    assert clean[0][0] == 0 and "--dnabert" in clean[0][1] and "ID_OR_DIR" in clean[0][1]
    assert clean[1][0] == 2 and "No such option '--bogus'" in clean[1][2]
