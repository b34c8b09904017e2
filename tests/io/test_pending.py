"""The one pending-record format of crash-safe writes (``zarrstain.io.pending``)."""

from __future__ import annotations

import dataclasses

import zarr

from zarrstain.io.pending import KEY, PendingRecord, begin


def _record(**changes):
    base = PendingRecord(
        "append", ("DNA (predicted)",), "fp-1", "uint16", (0, 2), first_new_index=3
    )
    return dataclasses.replace(base, **changes)


def test_a_record_resumes_only_the_same_cleared_write(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    calls = []

    def store(prov):
        calls.append(("store", prov[KEY]["cleared"]))
        group.attrs["zarrstain"] = prov

    def clear():
        calls.append(("clear",))

    assert begin(group, _record(), store, clear) is False  # nothing to resume: cleared first
    assert calls == [("store", False), ("clear",), ("store", True)]
    stored = PendingRecord.of(group)
    assert stored.cleared and stored.started and stored.labels == ("DNA (predicted)",)
    assert stored.to_json()["time"] == [0, 2]
    calls.clear()
    assert begin(group, _record(), store, clear) is True and calls == []  # resumed
    # any identifying field differing, no fingerprint, or a layout that cannot be reused
    for other in (_record(dtype="float32"), _record(time=None), _record(fingerprint=None),
                  _record(first_new_index=4), _record(kind="create")):  # fmt: skip
        assert not other.resumes(PendingRecord.of(group))
    assert begin(group, _record(), store, clear, can_resume=False) is False


def test_an_uncleared_or_older_record_is_not_resumed(tmp_path):
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.attrs["zarrstain"] = {KEY: _record().to_json()}  # interrupted before clearing
    assert not _record().resumes(PendingRecord.of(group))
    # a record from an older zarrstain (no kind): read as absent, the write starts over
    group.attrs["zarrstain"] = {KEY: {"labels": ["x"], "fingerprint": "fp", "cleared": True}}
    assert PendingRecord.of(group) is None
    group.attrs["zarrstain"] = {}
    assert PendingRecord.of(group) is None
