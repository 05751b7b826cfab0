"""`virnucpro plot`: figures exist, are PNGs of the documented size and show the calls."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_predict_output

from virnucpro.cli import main
from virnucpro.errors import InputError
from virnucpro.plot import (
    CALL_COLOURS,
    DPI,
    HISTOGRAM_IN,
    read_tracks,
    run_plot,
    select_tracks,
    track_size_px,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pixels(path) -> np.ndarray:
    """RGB pixels as uint8, [height, width, 3]."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _has_colour(pixels: np.ndarray, hex_colour: str) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return bool(np.any(np.all(np.abs(pixels.astype(int) - rgb) <= 2, axis=2)))


def test_read_and_select_tracks(tmp_path):
    tracks = read_tracks(write_predict_output(tmp_path / "pred"))
    assert [t.seq_id for t in tracks] == ["v1", "v2", "o1", "o2", "o3", "x1"]
    v1 = tracks[0]
    assert (v1.length, v1.score, v1.call) == (1000, 0.525, "virus")
    assert v1.chunks == [(0, 500, 0.75, "virus"), (500, 1000, 0.3, "not_virus")]
    assert tracks[2].chunks[1] == (200, 700, None, "no_call")
    # Highest score first; the sequence without a score comes last.
    assert [t.seq_id for t in select_tracks(tracks, 10)] == ["x1", "o2", "v1", "o1", "v2", "o3"]
    assert [t.seq_id for t in select_tracks(tracks, 2)] == ["x1", "o2"]
    assert [t.seq_id for t in select_tracks(tracks, 2, ("o3", "v1"))] == ["o3", "v1"]
    with pytest.raises(InputError, match="--seq-id 'nope'"):
        select_tracks(tracks, 2, ("nope",))


def test_plot_files(tmp_path):
    pred = write_predict_output(tmp_path / "pred")
    written = run_plot(pred, tmp_path / "figs", top=3, html_page=True)
    assert {p.name for p in written.values()} == {"score_tracks.png", "score_histogram.png",
                                                  "plots.html"}
    tracks = _pixels(written["tracks"])
    assert track_size_px(3) == (1000, 575)
    assert tracks.shape == (575, 1000, 3)
    # x1 (virus), o2 (virus) and v1 (a virus and a not_virus chunk): both call colours show.
    assert _has_colour(tracks, CALL_COLOURS["virus"])
    assert _has_colour(tracks, CALL_COLOURS["not_virus"])
    hist = _pixels(written["histogram"])
    assert hist.shape == (round(HISTOGRAM_IN[1] * DPI), round(HISTOGRAM_IN[0] * DPI), 3)
    assert len(np.unique(hist.reshape(-1, 3), axis=0)) > 10
    assert _has_colour(hist, CALL_COLOURS["virus"])
    assert _has_colour(hist, CALL_COLOURS["not_virus"])

    page = written["html"].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(i) for i in images] == [written["tracks"].read_bytes(),
                                                     written["histogram"].read_bytes()]
    assert page.count("<tr><td>") == 3 and "<td>x1</td>" in page


def test_plot_cli_default_dir_and_no_call_track(tmp_path, capsys):
    pred = write_predict_output(tmp_path / "pred")
    assert main(["plot", str(pred), "--seq-id", "o3", "--seq-id", "o1"]) == 0
    assert (pred / "score_tracks.png").read_bytes().startswith(PNG_MAGIC)
    assert (pred / "score_histogram.png").read_bytes().startswith(PNG_MAGIC)
    assert not (pred / "plots.html").exists()
    tracks = _pixels(pred / "score_tracks.png")
    assert tracks.shape[:2] == track_size_px(2)[::-1]
    assert _has_colour(tracks, CALL_COLOURS["no_call"])
    assert "score_tracks.png" in capsys.readouterr().err


def test_plot_errors(tmp_path, capsys):
    pred = write_predict_output(tmp_path / "pred")
    assert main(["plot", str(pred), "--seq-id", "nope"]) == 1
    assert capsys.readouterr().err == ("virnucpro: error: --seq-id 'nope': no such sequence in "
                                       "the predict output\n")
    assert main(["plot", str(tmp_path)]) == 1
    assert "sequences.tsv: no such file" in capsys.readouterr().err


def test_help_imports_neither_torch_nor_matplotlib():
    code = ("import sys; from virnucpro.cli import main; import virnucpro.evaluate, "
            "virnucpro.plot\n"
            "for cmd in ('train', 'evaluate', 'plot'):\n"
            "    assert main([cmd, '--help']) == 0\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("[]")
