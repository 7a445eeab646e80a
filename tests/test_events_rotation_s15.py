"""[node] events rotated by rename (logrotate's default) or removed: the node opens the file again
under its name (review s15: the lines went on into the renamed file, the configured one missing)."""
from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest

from consensus.node import EventsLog, StartupError


def _cfg(tmp_path, name="node0.events.jsonl"):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return SimpleNamespace(events=tmp_path / name, index=0, data_dir=data, path=None, load_file=None)


def _kinds(path) -> list[str]:
    return [json.loads(line)["kind"] for line in path.read_text().splitlines()]


def test_a_renamed_events_file_is_opened_again_under_its_name(tmp_path):
    cfg = _cfg(tmp_path)
    ev = EventsLog(cfg)
    ev.write(json.dumps({"kind": "a"}) + "\n")
    os.rename(cfg.events, str(cfg.events) + ".1")
    ev.write(json.dumps({"kind": "b"}) + "\n")
    os.remove(cfg.events)
    ev.write(json.dumps({"kind": "c"}) + "\n")
    ev.close()
    assert _kinds(tmp_path / "node0.events.jsonl.1") == ["a"]
    assert _kinds(cfg.events) == ["c"]


def test_a_foreign_file_at_the_name_is_reported_once_and_loses_no_line(tmp_path, caplog):
    cfg = _cfg(tmp_path)
    ev = EventsLog(cfg)
    ev.write(json.dumps({"kind": "a"}) + "\n")
    os.rename(cfg.events, tmp_path / "old")
    cfg.events.write_text("not an event\n")
    with caplog.at_level(logging.WARNING, logger="consensus.node"):
        for kind in "bcd":
            ev.write(json.dumps({"kind": kind}) + "\n")
    assert len([r for r in caplog.records if "events" in r.getMessage()]) == 1
    assert _kinds(tmp_path / "old") == ["a", "b", "c", "d"]
    assert cfg.events.read_text() == "not an event\n"
    os.remove(cfg.events)  # the operator moves it aside: the next line opens the name again
    ev.write(json.dumps({"kind": "e"}) + "\n")
    ev.close()
    assert _kinds(cfg.events) == ["e"]



def test_a_fifo_whose_reader_goes_loses_lines_not_the_validator(tmp_path, caplog):
    """A reader leaving the events FIFO (a log shipper restarting) made the next line raise
    BrokenPipeError and stopped the validator (review s15)."""
    cfg = _cfg(tmp_path, "events.fifo")
    os.mkfifo(cfg.events)
    reader = os.open(cfg.events, os.O_RDONLY | os.O_NONBLOCK)
    ev = EventsLog(cfg)
    ev.write(json.dumps({"kind": "a"}) + "\n")
    assert os.read(reader, 4096).decode().count("\n") == 1
    os.close(reader)
    with caplog.at_level(logging.WARNING, logger="consensus.node"):
        for kind in "bc":
            ev.write(json.dumps({"kind": kind}) + "\n")  # no reader: dropped, no exception
        reader = os.open(cfg.events, os.O_RDONLY | os.O_NONBLOCK)
        ev.write(json.dumps({"kind": "d"}) + "\n")
    got = os.read(reader, 4096).decode().splitlines()
    os.close(reader)
    ev.close()
    assert [json.loads(x)["kind"] for x in got] == ["d"]
    said = [r.getMessage() for r in caplog.records]
    assert any("reader went away" in m for m in said) and any("2 line(s) were dropped" in m for m in said)


def test_a_file_nested_past_the_json_parser_is_refused_in_one_line(tmp_path, caplog):
    """A file at the events name beginning with deeply nested JSON raised RecursionError out of
    the start and, put there while the node ran, out of the next event line (review s15)."""
    cfg = _cfg(tmp_path)
    cfg.events.write_text("[" * 100_000 + "\n")
    with pytest.raises(StartupError, match="holds something other than a validator's events"):
        EventsLog(cfg)
    os.remove(cfg.events)
    ev = EventsLog(cfg)
    os.rename(cfg.events, tmp_path / "old")
    cfg.events.write_text("[" * 100_000 + "\n")
    with caplog.at_level(logging.WARNING, logger="consensus.node"):
        ev.write(json.dumps({"kind": "a"}) + "\n")
    ev.close()
    assert _kinds(tmp_path / "old") == ["a"]
