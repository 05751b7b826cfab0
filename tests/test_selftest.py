"""`virnucpro selftest` runs the whole pipeline on the bundled example."""

from __future__ import annotations

from virnucpro.cli import main


def test_selftest_passes(tmp_path, capsys):
    assert main(["selftest", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.strip().splitlines()[-1].startswith("selftest: 8 passed, 0 failed")
    assert (tmp_path / "predict" / "sequences.tsv").is_file()
