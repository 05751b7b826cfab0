"""The unit runner's progress reporting, and saved units."""

from __future__ import annotations

import logging

from virnucpro.progress import Progress


def test_progress_without_a_terminal_goes_to_the_log(caplog, monkeypatch):
    monkeypatch.setattr(Progress, "LOG_EVERY", 0.0)
    stats = {"cpu": 10}
    bar = Progress(enabled=False)  # no total: stdin
    with caplog.at_level(logging.INFO, logger="virnucpro.progress"):
        bar.update(10, 25, stats)
    assert caplog.records[0].getMessage().startswith("10 chunks, 25 frames; frames/s: cpu ")


def test_progress_counts_chunks_scored_of_the_total_with_an_eta(caplog, monkeypatch):
    """The share is chunks scored of the chunks the input check counted, not bytes read (the
    reader runs ahead of the models); the ETA follows the rate so far."""
    monkeypatch.setattr(Progress, "LOG_EVERY", 0.0)
    bar = Progress(enabled=False, total=1000)
    monkeypatch.setattr(bar, "_clock", lambda: 60.0)  # a minute after the start, a quarter
    bar.t0, bar.logged = 0.0, float("-inf")  # of the chunks is scored
    with caplog.at_level(logging.INFO, logger="virnucpro.progress"):
        bar.update(250, 600, {"cpu": 600})
    assert caplog.records[0].getMessage() == (
        "25% scored, 250 of 1000 chunks, 600 frames; frames/s: cpu 10/s; ETA 0:03:00")
    assert bar.eta() == 180.0


def test_the_live_bar_follows_chunks_and_ticks_between_units(monkeypatch):
    """On a terminal the bar shows chunks of the total, and its ETA is recomputed at every
    refresh, not only when a unit ends."""
    bar = Progress(enabled=True, total=400)
    now = [10.0]
    monkeypatch.setattr(bar, "_clock", lambda: now[0])
    bar.t0 = 0.0
    bar.update(100, 180, {"cpu": 180})
    task = bar.bar.tasks[0]
    assert (task.completed, task.total) == (100, 400)
    assert "100 of 400 chunks, 180 frames" in task.description
    eta_column = bar.bar.columns[4]
    assert str(eta_column.render(task)) == "ETA 0:00:30"
    now[0] = 20.0  # no unit finished since: the ETA still moves
    assert str(eta_column.render(task)) == "ETA 0:01:00"
    bar.close()


def test_progress_log_is_rate_limited(caplog):
    bar = Progress(enabled=False, total=100)
    with caplog.at_level(logging.INFO, logger="virnucpro.progress"):
        for i in range(100):
            bar.update(i, i, {})
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
