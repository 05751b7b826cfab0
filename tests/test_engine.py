"""The unit runner's progress reporting without a terminal."""

from __future__ import annotations

import logging

from virnucpro.progress import Progress


def test_progress_without_a_terminal_goes_to_the_log(caplog, monkeypatch):
    monkeypatch.setattr(Progress, "LOG_EVERY", 0.0)
    stats = {"cpu": 10}
    bar = Progress(enabled=False)
    with caplog.at_level(logging.INFO, logger="virnucpro.progress"):
        bar.update(10, 40, False, stats)
        bar.update(40, 40, True, stats)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("10 frames scored; frames/s: cpu ")
    assert lines[1].startswith("40 of 40 frames scored; frames/s: cpu ")


def test_progress_has_a_total_and_an_eta_from_the_input_size(caplog, monkeypatch):
    """The share of the input scored is known from the first unit on: bytes of input behind
    the units handed on, of the input's size (compressed bytes for gzip)."""
    monkeypatch.setattr(Progress, "LOG_EVERY", 0.0)
    bar = Progress(enabled=False)
    monkeypatch.setattr(bar, "_clock", lambda: 60.0)  # a minute after the start, a quarter
    bar.t0, bar.logged = 0.0, float("-inf")  # of the input is done
    with caplog.at_level(logging.INFO, logger="virnucpro.progress"):
        bar.update(100, 100, False, {"cpu": 100}, (250, 1000))
    assert caplog.records[0].getMessage() == (
        "25% of the input scored, 100 frames scored; frames/s: cpu 2/s; ETA 0:03:00")


def test_progress_log_is_rate_limited(caplog):
    bar = Progress(enabled=False)
    with caplog.at_level(logging.INFO, logger="virnucpro.progress"):
        for i in range(100):
            bar.update(i, 100, True, {})
    assert not caplog.records  # the first line comes after Progress.LOG_EVERY seconds


def test_a_unit_killed_mid_write_is_not_taken_as_finished(tmp_path):
    import numpy as np

    from virnucpro.runtime.batching import WorkUnit
    from virnucpro.runtime.units import finished_units, load_unit, save_unit
    from virnucpro.runtime.worker import UnitResult

    (tmp_path / "units").mkdir()
    unit = WorkUnit(7, ("a_chunk_1F1",), ("ACGTACG",), ("TY",))
    scores = np.array([[0.25, 0.75]], np.float32)
    save_unit(tmp_path, unit, UnitResult(7, scores, None))
    # What a kill during the next save leaves behind: a partial temporary file.
    (tmp_path / "units" / ".000008.npz.tmp").write_bytes(b"PK\x03\x04 partial")
    assert finished_units(tmp_path) == {7}
    assert load_unit(tmp_path, unit).scores.tolist() == scores.tolist()
