"""Crash safety: a write interrupted at any stage leaves a valid store, lists no half-written
channel, and a re-run completes with the same result as an uninterrupted run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

import zarrstain
import zarrstain.io.channels as channels_mod


class SimulatedCrash(Exception):  # noqa: N818 - reads better in the tests
    pass


def _prediction(image, label="DNA (predicted)"):
    return (image.sel(c=["BF"]).astype("float32") * 0.5).assign_coords(c=[label])


def _exploding(pred, block_index=1):
    """The same prediction, but computing one of its blocks raises (a crash mid-write)."""

    def fail_on(block, block_info=None):
        if block_info[0]["chunk-location"][-1] == block_index:
            raise SimulatedCrash("worker died")
        return block

    data = pred.data.rechunk({4: 16}).map_blocks(fail_on, dtype=pred.dtype)
    return pred.copy(data=data)


def _fail_on_call(monkeypatch, target, name, n):
    """Make the n-th call (1-based) of ``target.name`` raise SimulatedCrash."""
    original = getattr(target, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise SimulatedCrash(f"crash in {name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


def _reference(path, tmp_path, scene, label="DNA (predicted)"):
    """The result of an uninterrupted run on an untouched copy."""
    ref = tmp_path / "reference.zarr"
    shutil.copytree(path, ref)
    zarrstain.write_channels(
        ref, _prediction(zarrstain.open_image(ref, scene), label), dtype="uint16"
    )
    return zarrstain.open_image(ref, scene)


def _assert_untouched(path, scene, original, validate):
    validate(path)
    now = zarrstain.open_image(path, scene)
    assert list(now.c.values) == list(original.c.values)
    np.testing.assert_array_equal(now.values, original.values)


STAGES = ["mid-data", "before-resize", "before-metadata"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("stage", STAGES)
def test_interrupted_append_then_rerun(make_store, tmp_path, validate, monkeypatch, version, stage):
    path = make_store("plate", version)
    scene = "A/2/0"
    original = zarrstain.open_image(path, scene).compute()
    expected = _reference(path, tmp_path, scene)
    pred = _prediction(zarrstain.open_image(path, scene))

    with monkeypatch.context() as m:
        if stage == "mid-data":
            pred_to_write = _exploding(pred)
        else:
            pred_to_write = pred
            if stage == "before-resize":
                _fail_on_call(m, zarr.Array, "resize", 1)
            else:  # shapes grown, omero not yet updated (2nd attrs write of the append)
                _fail_on_call(m, channels_mod, "set_image_attrs", 2)
        with pytest.raises(SimulatedCrash):
            zarrstain.write_channels(path, pred_to_write, dtype="uint16")

    validate(path)
    after_crash = zarrstain.open_image(path, scene)
    assert "DNA (predicted)" not in list(after_crash.c.values)  # never listed half-written
    np.testing.assert_array_equal(after_crash.isel(c=slice(0, 3)).values, original.values)
    if stage != "before-metadata":
        _assert_untouched(path, scene, original, validate)

    zarrstain.write_channels(path, pred, dtype="uint16")  # the re-run
    final = zarrstain.open_image(path, scene)
    assert list(final.c.values) == list(expected.c.values)
    np.testing.assert_array_equal(final.values, expected.values)
    for level in (1,):
        np.testing.assert_array_equal(
            zarrstain.open_image(path, scene, level=level).values,
            zarrstain.open_image(tmp_path / "reference.zarr", scene, level=level).values,
        )
    assert "pending" not in zarr.open_group(str(path), path=scene, mode="r").attrs["zarrstain"]
    validate(path)


def test_interrupted_overwrite_is_marked_incomplete(make_store, validate, monkeypatch):
    path = make_store("image", "0.5")
    image = zarrstain.open_image(path)
    zarrstain.write_channels(path, _prediction(image), dtype="uint16")
    doubled = _prediction(image).copy(data=_prediction(image).data * 2)
    with pytest.raises(SimulatedCrash):
        zarrstain.write_channels(path, _exploding(doubled), dtype="uint16", overwrite=True)
    validate(path)
    labels = list(zarrstain.open_image(path).c.values)
    assert labels[-1] == "DNA (predicted) [incomplete]"  # no reader takes it for complete
    zarrstain.write_channels(path, doubled, dtype="uint16", overwrite=True)
    final = zarrstain.open_image(path)
    assert list(final.c.values)[-1] == "DNA (predicted)"
    np.testing.assert_allclose(
        final.sel(c="DNA (predicted)").values,
        np.clip(np.round(image.sel(c="BF").values * 1.0), 0, 65535),
        atol=1,
    )


def test_crash_leaves_other_scenes_alone(make_store, validate):
    path = make_store("plate", "0.4")
    scenes = zarrstain.open_scenes(path)
    preds = {
        "A/1/0": _prediction(scenes["A/1/0"]),
        "A/1/1": _exploding(_prediction(scenes["A/1/1"])),
    }
    with pytest.raises(SimulatedCrash):
        zarrstain.write_channels(path, preds, dtype="uint16")
    validate(path)
    assert "DNA (predicted)" in list(zarrstain.open_image(path, "A/1/0").c.values)
    assert "DNA (predicted)" not in list(zarrstain.open_image(path, "A/1/1").c.values)
