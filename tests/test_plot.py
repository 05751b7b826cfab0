"""`virnucpro plot`: figures exist, are PNGs of the documented size and show the calls and,
where the output has regions.tsv, the regions."""

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
from virnucpro.outputs import tsv_row
from virnucpro.plot import (
    CALL_COLOURS,
    DPI,
    HISTOGRAM_IN,
    REGION_ALPHA,
    REGION_COLOURS,
    SCATTER_IN,
    SequenceTrack,
    choose_tracks,
    draw_score_length,
    draw_track,
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


def _has_colour(pixels: np.ndarray, hex_colour: str, alpha: float = 1.0) -> bool:
    return bool(np.any(_colour_mask(pixels, hex_colour, alpha)))


def _colour_mask(pixels: np.ndarray, hex_colour: str, alpha: float = 1.0) -> np.ndarray:
    """[height, width] True where a pixel is `hex_colour` at `alpha` over white (within 2)."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    blended = np.round(alpha * rgb + (1 - alpha) * 255)
    return np.all(np.abs(pixels.astype(int) - blended) <= 2, axis=2)


# regions.tsv for the hand-made output: v1's virus chunk [0, 500) and all of x1.
REGIONS = [("v1", "region_1", 0, 500, 500, 1, "0.75", "partial"),
           ("x1", "region_1", 0, 300, 300, 1, "0.8", "whole")]


def _write_regions(pred, rows=REGIONS):
    from virnucpro.regions import REGION_COLUMNS

    (pred / "regions.tsv").write_text(tsv_row(REGION_COLUMNS) + "".join(map(tsv_row, rows)))
    return pred


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
    # The hand-made sequences have 1-2 chunks, so tracks are drawn only when asked for.
    written = run_plot(pred, tmp_path / "figs", seq_ids=("x1", "o2", "v1"), html_page=True)
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


def test_plot_on_reads_draws_score_against_length(tmp_path, capsys):
    """Issue 21: on reads (1-2 chunks each) plot drew ten identical flat one-chunk tracks."""
    pred = write_predict_output(tmp_path / "pred")
    assert main(["plot", str(pred), "--top", "3", "--html"]) == 0
    err = capsys.readouterr().err
    assert ("virnucpro: all 6 sequences have fewer than 3 chunks, so their chunk tracks would "
            "be flat: score_tracks.png shows virus_score against length instead\n") in err
    figure = _pixels(pred / "score_tracks.png")
    assert figure.shape == (round(SCATTER_IN[1] * DPI), round(SCATTER_IN[0] * DPI), 3)
    assert _has_colour(figure, CALL_COLOURS["virus"], 0.7)
    assert _has_colour(figure, CALL_COLOURS["not_virus"], 0.7)
    assert (pred / "plots.html").read_text().count("<tr><td>") == 3  # the top 3 in the table

    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    draw_score_length(ax, read_tracks(pred), 0.5)
    dots = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    # o3 (no_call) has no score to plot; the title says so.
    assert dots == {"not_virus (2)": [[400, 0.2], [700, 0.4]],
                    "virus (3)": [[1000, 0.525], [300, 0.55], [300, 0.8]]}
    assert ax.get_title(loc="left").startswith("No chunk tracks: all 6 sequences have fewer "
                                               "than 3 chunks")
    assert ax.get_title(loc="left").endswith("(1 no_call not shown)")


def test_default_tracks_leave_out_short_sequences():
    def seq(name: str, n_chunks: int, score: float) -> SequenceTrack:
        chunks = [(300 * k, 300 * k + 300, score, "virus") for k in range(n_chunks)]
        return SequenceTrack(name, 300 * n_chunks, score, "virus", chunks)

    tracks = [seq("read1", 1, 0.9), seq("contig1", 5, 0.6), seq("read2", 2, 0.8),
              seq("contig2", 3, 0.7)]
    shown, note = choose_tracks(tracks, 10)
    assert [t.seq_id for t in shown] == ["contig2", "contig1"]
    assert note == ("score_tracks.png: the 2 highest-scoring of 2 sequences with 3 or more "
                    "chunks; 2 shorter ones (flat tracks) are left out, --seq-id draws any")
    assert [t.seq_id for t in choose_tracks(tracks, 1)[0]] == ["contig2"]
    # Asked for by id, a short sequence is drawn, and nothing needs saying.
    assert choose_tracks(tracks, 10, ("read1",)) == ([tracks[0]], "")
    # Only sequences long enough: the top as before, no note.
    assert choose_tracks(tracks[1::2], 10) == ([tracks[3], tracks[1]], "")
    assert choose_tracks(tracks[::2], 10)[0] == []  # only reads: no track at all


def test_plot_errors(tmp_path, capsys):
    pred = write_predict_output(tmp_path / "pred")
    assert main(["plot", str(pred), "--seq-id", "nope"]) == 1
    assert capsys.readouterr().err == ("virnucpro: error: --seq-id 'nope': no such sequence in "
                                       "the predict output\n")
    assert main(["plot", str(tmp_path)]) == 1
    assert "sequences.tsv: no such file" in capsys.readouterr().err


def test_read_regions(tmp_path):
    pred = write_predict_output(tmp_path / "pred")
    assert not (pred / "regions.tsv").exists()  # an output from before regions.tsv
    assert all(t.regions == [] for t in read_tracks(pred))
    tracks = {t.seq_id: t for t in read_tracks(_write_regions(pred))}
    assert tracks["v1"].regions == [(0, 500, "partial")]
    assert tracks["x1"].regions == [(0, 300, "whole")]
    assert sum(len(t.regions) for t in tracks.values()) == 2
    _write_regions(pred, [("ghost", "region_1", 0, 10, 10, 1, "0.9", "whole")])
    with pytest.raises(InputError, match="region_1 names sequence 'ghost'"):
        read_tracks(pred)


def _draw(track):
    """A new Axes with `track` drawn on it by draw_track, threshold 0.5."""
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    draw_track(ax, track, 0.5)
    return ax


def _lines(ax) -> list:
    return [(list(ln.get_xdata()), list(ln.get_ydata()), ln.get_color(), ln.get_linewidth())
            for ln in ax.lines]


def test_region_band_on_track(tmp_path):
    from matplotlib.colors import to_rgba

    pred = write_predict_output(tmp_path / "pred")
    before = {t.seq_id: t for t in read_tracks(pred)}
    after = {t.seq_id: t for t in read_tracks(_write_regions(pred))}
    ax = _draw(after["v1"])
    assert [(p.get_label(), p.get_x(), p.get_width(), p.get_facecolor()) for p in ax.patches] == [
        ("partial region", 0, 500, to_rgba(REGION_COLOURS["partial"], REGION_ALPHA))]
    assert ax.patches[0].zorder < min(ln.zorder for ln in ax.lines)  # behind the scores
    # The chunk scores and the threshold are drawn exactly as without regions.
    assert _lines(ax) == _lines(_draw(before["v1"]))
    assert len(_lines(ax)) == 3
    # x1's region is whole: a band over the whole sequence, in the whole colour.
    assert [(p.get_x(), p.get_width(), p.get_facecolor()) for p in _draw(after["x1"]).patches] == [
        (0, 300, to_rgba(REGION_COLOURS["whole"], REGION_ALPHA))]


def test_plot_shows_region_band_only_with_regions_tsv(tmp_path):
    pred = write_predict_output(tmp_path / "pred")
    old = _pixels(run_plot(pred, tmp_path / "old", seq_ids=("v1",))["tracks"])
    new = _pixels(run_plot(_write_regions(pred), tmp_path / "new", seq_ids=("v1",))["tracks"])
    assert old.shape == new.shape == (225, 1000, 3)
    assert not _colour_mask(old, REGION_COLOURS["partial"], REGION_ALPHA).any()
    band = _colour_mask(new, REGION_COLOURS["partial"], REGION_ALPHA)
    band[:40] = False  # the legend's swatch is above the panel
    cols = np.flatnonzero(band.any(axis=0))
    virus = np.flatnonzero(_colour_mask(new, CALL_COLOURS["virus"]).any(axis=0))
    not_virus = np.flatnonzero(_colour_mask(new, CALL_COLOURS["not_virus"])[40:].any(axis=0))
    # The band runs under the virus chunk [0, 500) and stops where the not_virus chunk begins.
    assert abs(cols.min() - virus.min()) <= 2 and abs(cols.max() + 1 - not_virus.min()) <= 2
    assert len(cols) == cols.max() - cols.min() + 1  # one band, unbroken by the score bar


def test_help_imports_neither_torch_nor_matplotlib():
    code = ("import sys; from virnucpro.cli import main; import virnucpro.evaluate, "
            "virnucpro.plot\n"
            "for cmd in ('train', 'evaluate', 'plot'):\n"
            "    assert main([cmd, '--help']) == 0\n"
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().endswith("[]")
