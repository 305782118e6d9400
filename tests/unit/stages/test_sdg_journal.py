"""The SDG journal on its own: appended records survive a reopen, a crash mid-write costs only the torn record,
and opening or reading a journal changes nothing that is intact."""

from __future__ import annotations

import json
import os

import pytest

from eft.stages.sdg import journal as journal_mod
from eft.stages.sdg.journal import Journal

RECORDS = [
    {"bundle": "b-1", "phase": "generated", "questions": [{"text": "Wie groß ist ein Pod?"}]},
    {"bundle": "b-1", "phase": "judged", "usage": {"total_tokens": 12}},
    {"bundle": "b-2", "phase": "generated", "questions": []},
]


def lines(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_come_back_in_append_order_after_reopening(tmp_path):
    path = tmp_path / "nested" / "journal.jsonl"  # the folder is made on open
    j = Journal(path)
    assert list(j.records()) == [] and not path.exists()
    for rec in RECORDS[:2]:
        j.append(rec)
    resumed = Journal(path)
    assert list(resumed.records()) == RECORDS[:2]
    resumed.append(RECORDS[2])
    assert list(Journal(path).records()) == RECORDS
    # One JSON object per line, UTF-8 as written (not \\u escapes).
    assert [json.loads(line) for line in lines(path)] == RECORDS
    assert "Wie groß" in path.read_text(encoding="utf-8")


def test_every_append_is_fsynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(journal_mod.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    j = Journal(tmp_path / "journal.jsonl")
    for rec in RECORDS:
        j.append(rec)
    assert len(synced) == len(RECORDS)


def _torn_cases() -> list[int]:
    """Every byte offset inside the last record's line at which a crash could have cut it."""
    last = json.dumps(RECORDS[2], ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    return list(range(1, len(last)))


@pytest.mark.parametrize("cut", _torn_cases())
def test_a_torn_last_line_is_cut_off_and_the_next_append_starts_clean(tmp_path, cut):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for rec in RECORDS:
        j.append(rec)
    intact = b"".join(lines(path)[:2])
    path.write_bytes(path.read_bytes()[: len(intact) + cut])  # the process died mid-write

    reopened = Journal(path)
    assert path.read_bytes() == intact
    assert list(reopened.records()) == RECORDS[:2]
    reopened.append({"bundle": "b-2", "phase": "judged"})
    assert list(Journal(path).records()) == [*RECORDS[:2], {"bundle": "b-2", "phase": "judged"}]


def test_a_journal_of_one_torn_line_opens_empty(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"bundle": "b-1", "pha')
    j = Journal(path)
    assert path.read_bytes() == b"" and list(j.records()) == []
    j.append(RECORDS[0])
    assert list(j.records()) == [RECORDS[0]]


def test_the_repair_is_fsynced(tmp_path, monkeypatch):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"bundle": "b-1"}\n{"bundle": "b-2", "pha')
    synced: list[int] = []
    monkeypatch.setattr(journal_mod.os, "fsync", synced.append)
    Journal(path)
    assert len(synced) == 1 and path.read_bytes() == b'{"bundle": "b-1"}\n'


def test_opening_and_reading_leave_an_intact_journal_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for rec in RECORDS:
        j.append(rec)
    before = path.read_bytes()
    synced: list[int] = []
    monkeypatch.setattr(journal_mod.os, "fsync", synced.append)
    Journal(path)
    again = Journal(path)
    assert list(again.records()) == list(again.records()) == RECORDS
    assert path.read_bytes() == before and synced == []  # nothing to repair, nothing written


def test_unreadable_lines_inside_are_skipped_not_fatal(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"\n".join([
        b'{"bundle": "b-1", "phase": "generated"}',
        b"",                      # blank
        b"not json at all",
        b'["a", "list"]',         # JSON, but not a record
        b'{"bundle": "b-\xff\xfe"}',  # not UTF-8
        b"   ",
        b'{"bundle": "b-2", "phase": "judged"}',
    ]) + b"\n")
    got = list(Journal(path).records())
    assert [r["bundle"] for r in got] == ["b-1", "b-\ufffd\ufffd", "b-2"]
    assert got[0] == {"bundle": "b-1", "phase": "generated"} and got[2] == {"bundle": "b-2", "phase": "judged"}
