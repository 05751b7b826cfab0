"""`virnucpro plot`: pictures of a predict output.

`score_tracks.png`: for the top sequences (highest virus_score first, or those asked for),
each chunk's score drawn as a bar from its start to its end, coloured by its call, with the
threshold as a dotted line (the original's `drew_fig.py` drew the max frame score per chunk;
ours draws the chunk score that the sequence call is made from). Where the output has
`regions.tsv` (older outputs may not), each viral region of a sequence is a translucent band
behind its chunk scores, coloured by its kind (partial or whole).
Tracks of one or two chunks are flat and say nothing the sequence's own score does not, so by
default only sequences of MIN_TRACK_CHUNKS or more chunks get one; where there are none (reads),
`score_tracks.png` plots each sequence's score against its length instead, and its title and
the message `plot` prints say so. `--seq-id` draws the tracks asked for, however short.
`score_histogram.png`: the distribution of sequence scores, stacked by call.
`plots.html` (with `--html`): one self-contained page embedding both, plus a table.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virnucpro import files, outputs
from virnucpro.errors import InputError
from virnucpro.regions import PARTIAL, REGION_COLUMNS, WHOLE
from virnucpro.verdicts import NO_CALL, NOT_VIRUS, VIRUS

CALL_COLOURS = {VIRUS: "#d62728", NOT_VIRUS: "#1f77b4", NO_CALL: "#d9d9d9"}
DPI = 100
TRACK_WIDTH_IN = 10.0  # score_tracks.png: 1000 px wide
TRACK_PANEL_IN = 1.75  # and 175 px per sequence, plus TRACK_MARGIN_IN
TRACK_MARGIN_IN = 0.5
HISTOGRAM_IN = (6.0, 4.0)  # score_histogram.png: 600 x 400 px
HISTOGRAM_BINS = 20
REGION_COLOURS = {PARTIAL: "#ff7f0e", WHOLE: "#9467bd"}  # bands behind the chunk scores
REGION_ALPHA = 0.2  # light enough that the score bars and no_call bands show through
MIN_TRACK_CHUNKS = 3  # fewer chunks draw a flat track: one or two bars, no shape
SCATTER_IN = (10.0, 5.0)  # score_tracks.png when every sequence is too short for a track


@dataclass
class SequenceTrack:
    """One sequence of a predict output and its chunks."""

    seq_id: str
    length: int
    score: float | None
    call: str
    chunks: list[tuple[int, int, float | None, str]] = field(default_factory=list)
    # (start, end, score or None, call)
    regions: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind)


def _opt_float(text: str) -> float | None:
    return None if text == "" else float(text)


def read_tracks(pred_dir: Path) -> list[SequenceTrack]:
    """Every sequence of a predict output with its chunks, in input order."""
    paths = outputs.predict_paths(pred_dir)
    cols = outputs.SEQUENCE_COLUMNS
    tracks = {r[0]: SequenceTrack(r[0], int(r[cols.index("length")]),
                                  _opt_float(r[cols.index("virus_score")]),
                                  r[cols.index("prediction")])
              for r in outputs.read_table(paths["sequences"], cols)}
    for chunk_id, seq_id, start, end, _, score, call in outputs.read_table(
            paths["chunks"], outputs.CHUNK_COLUMNS):
        track = tracks.get(seq_id)
        if track is None:
            raise InputError(f"{paths['chunks']}: chunk {chunk_id} names sequence {seq_id!r}, "
                             f"which is not in {paths['sequences'].name}")
        track.chunks.append((int(start), int(end), _opt_float(score), call))
    if paths["regions"].exists():  # outputs from before regions.tsv are drawn without bands
        _add_regions(tracks, paths["regions"])
    return list(tracks.values())


def _add_regions(tracks: dict[str, SequenceTrack], path: Path) -> None:
    for seq_id, region_id, start, end, _, _, _, kind in outputs.read_table(path, REGION_COLUMNS):
        track = tracks.get(seq_id)
        if track is None:
            raise InputError(f"{path}: {region_id} names sequence {seq_id!r}, which is not in "
                             f"{outputs.PREDICT_FILES['sequences']}")
        track.regions.append((int(start), int(end), kind))


def select_tracks(tracks: list[SequenceTrack], top: int,
                  seq_ids: tuple[str, ...] = ()) -> list[SequenceTrack]:
    """The sequences named in `seq_ids` (in that order), else the `top` highest scores
    (ties and sequences without a score keep input order, unscored last)."""
    if seq_ids:
        by_id = {t.seq_id: t for t in tracks}
        missing = [s for s in seq_ids if s not in by_id]
        if missing:
            raise InputError(f"--seq-id {missing[0]!r}: no such sequence in the predict output")
        return [by_id[s] for s in seq_ids]
    ranked = sorted(tracks, key=lambda t: -t.score if t.score is not None else 1.0)
    return ranked[:top]


def choose_tracks(tracks: list[SequenceTrack], top: int,
                  seq_ids: tuple[str, ...] = ()) -> tuple[list[SequenceTrack], str]:
    """The tracks score_tracks.png draws and a note on what was left out, and why. Without
    `seq_ids`, the `top` highest scores among sequences of MIN_TRACK_CHUNKS or more chunks;
    no track (a score-against-length plot instead) when there are none."""
    if seq_ids:
        return select_tracks(tracks, top, seq_ids), ""
    long = [t for t in tracks if len(t.chunks) >= MIN_TRACK_CHUNKS]
    short = len(tracks) - len(long)
    if not long:
        return [], (f"all {len(tracks)} sequences have fewer than {MIN_TRACK_CHUNKS} chunks, "
                     "so their chunk tracks would be flat: score_tracks.png shows virus_score "
                     "against length instead")
    shown = select_tracks(long, top)
    note = (f"score_tracks.png: the {len(shown)} highest-scoring of {len(long)} sequences "
            f"with {MIN_TRACK_CHUNKS} or more chunks; {short} shorter ones (flat tracks) are "
            "left out, --seq-id draws any") if short else ""
    return shown, note


def track_size_px(n: int) -> tuple[int, int]:
    """Width and height of score_tracks.png for `n` sequences."""
    return round(TRACK_WIDTH_IN * DPI), round((TRACK_MARGIN_IN + TRACK_PANEL_IN * n) * DPI)


def draw_regions(ax: Any, regions: list[tuple[int, int, str]]) -> None:
    """A translucent band per (start, end, kind) region, behind everything else on `ax`."""
    for start, end, kind in regions:
        # zorder 0 and drawn first: under the no_call bands (also 0) and the score bars
        ax.axvspan(start, end, color=REGION_COLOURS.get(kind, "0.5"), alpha=REGION_ALPHA, lw=0,
                   zorder=0, label=f"{kind} region")


def draw_track(ax: Any, track: SequenceTrack, threshold: float) -> None:
    """One sequence's panel: its regions, chunk scores, threshold and title."""
    draw_regions(ax, track.regions)
    for start, end, score, call in track.chunks:
        if score is None:  # a chunk without a kept frame: a grey band behind the scores
            ax.axvspan(start, end, color=CALL_COLOURS[NO_CALL], lw=0, zorder=0)
        else:
            ax.plot([start, end], [score, score], color=CALL_COLOURS[call], lw=4,
                    solid_capstyle="butt")
    ax.axhline(threshold, color="0.4", ls=":", lw=1)
    score = "no score" if track.score is None else f"score {track.score:.3f}"
    ax.set_title(f"{track.seq_id}  ({track.length:,} bp, {score}, {track.call})",
                 loc="left", fontsize=10)
    ax.set_xlim(0, max(track.length, 1))
    ax.set_ylim(-0.04, 1.04)  # bars at 0 and 1 stay clear of the frame
    ax.set_ylabel("chunk score")
    ax.spines[["top", "right"]].set_visible(False)


def plot_tracks(tracks: list[SequenceTrack], threshold: float, path: Path) -> None:
    """score_tracks.png: one panel per sequence, chunk scores along it."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not tracks:
        raise InputError("no sequence to plot")
    w, h = track_size_px(len(tracks))
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(tracks), 1, squeeze=False)[:, 0]
    for ax, track in zip(axes, tracks, strict=True):
        draw_track(ax, track, threshold)
    axes[-1].set_xlabel("position (bp)")
    handles = [Line2D([], [], color=c, lw=4, label=k) for k, c in CALL_COLOURS.items()]
    handles.append(Line2D([], [], color="0.4", ls=":", label=f"threshold {threshold:g}"))
    kinds = {kind for track in tracks for _, _, kind in track.regions}
    handles += [Patch(color=c, alpha=REGION_ALPHA, lw=0, label=f"{k} region")
                for k, c in REGION_COLOURS.items() if k in kinds]
    fig.legend(handles=handles, loc="outside upper right", ncols=len(handles), fontsize=9,
               frameon=False)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_score_length(tracks: list[SequenceTrack], threshold: float, path: Path) -> None:
    """score_tracks.png for short sequences (reads): virus_score against length, one dot per
    scored sequence, coloured by its call; the title says why there are no tracks."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=SCATTER_IN, dpi=DPI, layout="constrained")
    draw_score_length(fig.add_subplot(), tracks, threshold)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def draw_score_length(ax: Any, tracks: list[SequenceTrack], threshold: float) -> None:
    """virus_score against length on `ax`, one dot per scored sequence, by call."""
    for call in (NOT_VIRUS, VIRUS):
        points = [(t.length, t.score) for t in tracks if t.call == call and t.score is not None]
        if points:
            x, y = zip(*points, strict=True)
            ax.scatter(x, y, s=12, color=CALL_COLOURS[call], alpha=0.7, lw=0,
                       label=f"{call} ({len(points)})")
    ax.axhline(threshold, color="0.4", ls=":", lw=1, label=f"threshold {threshold:g}")
    no_call = sum(t.score is None for t in tracks)
    ax.set_title(f"No chunk tracks: all {len(tracks)} sequences have fewer than "
                 f"{MIN_TRACK_CHUNKS} chunks, so each track would be flat; virus_score against "
                 f"length instead" + (f" ({no_call} no_call not shown)" if no_call else ""),
                 loc="left", fontsize=10, wrap=True)
    ax.set(xlabel="sequence length (bp)", ylabel="virus_score", ylim=(-0.04, 1.04))
    ax.set_xlim(left=0)
    ax.legend(loc="best", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


def plot_histogram(tracks: list[SequenceTrack], threshold: float, path: Path) -> None:
    """score_histogram.png: sequence scores, stacked by call."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=HISTOGRAM_IN, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    groups = [(call, [t.score for t in tracks if t.call == call and t.score is not None])
              for call in (NOT_VIRUS, VIRUS)]
    ax.hist([g for _, g in groups], bins=HISTOGRAM_BINS, range=(0, 1), stacked=True,
            color=[CALL_COLOURS[c] for c, _ in groups],
            label=[f"{c} ({len(g)})" for c, g in groups])
    ax.axvline(threshold, color="0.4", ls=":", lw=1, label=f"threshold {threshold:g}")
    no_call = sum(t.score is None for t in tracks)
    ax.set(xlabel="sequence virus_score", ylabel="sequences", xlim=(0, 1),
           title=f"{len(tracks)} sequences" + (f" ({no_call} no_call)" if no_call else ""))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_html(pred_dir: Path, shown: list[SequenceTrack], images: list[Path],
               path: Path) -> None:
    """plots.html: the figures embedded as data URIs (one file to share) and a table."""
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'<p><img alt="{html.escape(p.name)}" src="data:image/png;base64,{data}"></p>'

    rows = "".join(
        f"<tr><td>{html.escape(t.seq_id)}</td><td>{t.length}</td>"
        f"<td>{'' if t.score is None else f'{t.score:.4f}'}</td><td>{html.escape(t.call)}</td>"
        f"<td>{len(t.chunks)}</td></tr>" for t in shown)
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>virnucpro: {html.escape(str(pred_dir))}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
        "text-align:left}</style></head><body>\n"
        f"<h1>virnucpro predictions</h1><p>{html.escape(str(pred_dir))}</p>\n"
        + "".join(img(p) for p in images)
        + "<table><tr><th>seq_id</th><th>length</th><th>virus_score</th><th>prediction</th>"
        f"<th>chunks</th></tr>{rows}</table>\n</body></html>\n")
    with files.atomic_write(path) as fh:
        fh.write(page)


def _threshold(pred_dir: Path) -> float:
    from virnucpro.evaluate import predict_threshold

    found = predict_threshold(pred_dir)
    return 0.5 if found is None else found


def run_plot(pred_dir: Path, out_dir: Path | None = None, *, top: int = 10,
             seq_ids: tuple[str, ...] = (), html_page: bool = False,
             say: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write the figures (and the HTML page) for a predict output; returns their paths.
    `say` gets a line when score_tracks.png leaves sequences out or draws no tracks."""
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    pred_dir = Path(pred_dir)
    out_dir = Path(out_dir) if out_dir is not None else pred_dir
    tracks = read_tracks(pred_dir)
    if not tracks:
        raise InputError(f"{pred_dir}: the predict output has no sequence")
    drawn, note = choose_tracks(tracks, top, seq_ids)
    threshold = _threshold(pred_dir)
    outputs.make_output_dir(out_dir)
    paths = outputs.plot_paths(out_dir)
    if drawn:
        plot_tracks(drawn, threshold, paths["tracks"])
    else:
        plot_score_length(tracks, threshold, paths["tracks"])
    if note and say is not None:
        say(note)
    shown = drawn or select_tracks(tracks, top)  # the page's table: what was drawn, or the top
    plot_histogram(tracks, threshold, paths["histogram"])
    written = {"tracks": paths["tracks"], "histogram": paths["histogram"]}
    if html_page:
        write_html(pred_dir, shown, [paths["tracks"], paths["histogram"]], paths["html"])
        written["html"] = paths["html"]
    return written
