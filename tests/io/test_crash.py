"""Crash safety: a write interrupted at any stage leaves a valid store, lists no half-written
channel, and a re-run completes with the same result as an uninterrupted run."""

from __future__ import annotations

import shutil

import dask
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
                _fail_on_call(m, channels_mod, "set_image_attrs", 3)
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


def test_crash_in_one_scene_lists_nothing_half_written(make_store, validate):
    """Scenes are written together; a crash in one leaves every scene as readers knew it."""
    path = make_store("plate", "0.4")
    scenes = zarrstain.open_scenes(path)
    preds = {
        "A/1/0": _prediction(scenes["A/1/0"]),
        "A/1/1": _exploding(_prediction(scenes["A/1/1"])),
    }
    with pytest.raises(SimulatedCrash):
        zarrstain.write_channels(path, preds, dtype="uint16")
    validate(path)
    for scene in preds:
        assert "DNA (predicted)" not in list(zarrstain.open_image(path, scene).c.values)
    preds["A/1/1"] = _prediction(scenes["A/1/1"])
    assert zarrstain.write_channels(path, preds, dtype="uint16") == dict.fromkeys(preds, "written")
    validate(path)
    for scene in preds:
        assert list(zarrstain.open_image(path, scene).c.values)[-1] == "DNA (predicted)"


def _counting(pred, calls, crash_at=None):
    """``pred`` whose blocks count their computations; the ``crash_at``-th one raises."""

    def count(block):
        if block.size == 0:  # dask probing the function's output type: not a computation
            return block
        calls.append(1)
        if len(calls) == crash_at:
            raise SimulatedCrash("killed")
        return block

    return pred.copy(data=pred.data.map_blocks(count, dtype=pred.dtype))


@pytest.mark.parametrize("out", [False, True], ids=["in-place", "out"])
def test_rerun_computes_only_missing_chunks(tmp_path, validate, out):
    from zarrstain.io.chunkgrid import stored_keys

    path = zarrstain.datasets.make_image(
        tmp_path / "img.zarr", shape=(2, 4, 40, 40), chunks=(1, 4, 16, 16), seed=5
    )
    image = zarrstain.open_image(path)
    pred = _prediction(image).chunk({"t": 2, "z": 4, "y": 16, "x": 16})
    n_blocks = pred.data.npartitions  # 3 × 3: one block per store chunk
    target = {"out": tmp_path / "out.zarr"} if out else {}
    reference = tmp_path / "reference.zarr"
    zarrstain.write_channels(path, pred, out=reference if out else None, dtype="uint16")
    if not out:  # the reference went into the store itself: start again from a copy
        shutil.move(path, reference)
        path = zarrstain.datasets.make_image(
            tmp_path / "img.zarr", shape=(2, 4, 40, 40), chunks=(1, 4, 16, 16), seed=5
        )
        image = zarrstain.open_image(path)
    pred = _prediction(image).chunk({"t": 2, "z": 4, "y": 16, "x": 16})
    pred.attrs["zarrstain"] = {"fingerprint": "the same write"}  # what predict provides

    calls = []
    with dask.config.set(scheduler="sync"), pytest.raises(SimulatedCrash):
        zarrstain.write_channels(path, _counting(pred, calls, crash_at=8), dtype="uint16", **target)
    written_to = zarr.open_group(str(target.get("out", path)), mode="r")["s0"]
    slot = "0" if out else "3"
    written = sum(1 for k in stored_keys(written_to) if k.split("/")[2:3] == [slot])
    assert 0 < written < n_blocks
    validate(path)

    calls.clear()
    status = zarrstain.write_channels(path, _counting(pred, calls), dtype="uint16", **target)
    assert status == {"": "written"} or list(status.values()) == ["written"]
    assert len(calls) == n_blocks - written  # only the missing chunks were computed
    result = target.get("out", path)
    validate(result)
    for level in (0, 1):
        np.testing.assert_array_equal(
            zarrstain.open_image(result, level=level).sel(c="DNA (predicted)").values,
            zarrstain.open_image(reference, level=level).sel(c="DNA (predicted)").values,
        )
    meta = zarr.open_group(str(result), mode="r").attrs["zarrstain"]
    assert "pending" not in meta


def test_a_different_write_does_not_reuse_leftover_chunks(tmp_path):
    path = zarrstain.datasets.make_image(
        tmp_path / "img.zarr", shape=(1, 4, 40, 40), chunks=(1, 4, 16, 16), seed=5
    )
    image = zarrstain.open_image(path)
    pred = _prediction(image).chunk({"z": 4, "y": 16, "x": 16})
    pred.attrs["zarrstain"] = {"fingerprint": "first"}
    with dask.config.set(scheduler="sync"), pytest.raises(SimulatedCrash):
        zarrstain.write_channels(path, _counting(pred, [], crash_at=5), dtype="uint16")
    other = pred * 2
    other.attrs["zarrstain"] = {"fingerprint": "second"}
    calls = []
    zarrstain.write_channels(path, _counting(other, calls), dtype="uint16")
    assert len(calls) == pred.data.npartitions  # nothing of "first" was taken for "second"
    np.testing.assert_array_equal(
        zarrstain.open_image(path).sel(c="DNA (predicted)").values,
        np.clip(np.round(image.sel(c="BF").values * 1.0), 0, 65535),
    )


def test_rerun_after_a_crash_in_a_lower_level_computes_no_model_block(tmp_path, monkeypatch):
    import zarrstain.io.stream as stream

    path = zarrstain.datasets.make_image(
        tmp_path / "img.zarr", shape=(1, 4, 40, 40), chunks=(1, 4, 16, 16), seed=5
    )
    pred = _prediction(zarrstain.open_image(path)).chunk({"z": 4, "y": 16, "x": 16})
    pred.attrs["zarrstain"] = {"fingerprint": "the same write"}
    with monkeypatch.context() as m:
        _fail_on_call(m, stream, "downsample_to", 1)  # full resolution written, level 1 not
        with pytest.raises(SimulatedCrash):
            zarrstain.write_channels(path, pred, dtype="uint16")
    calls = []
    zarrstain.write_channels(path, _counting(pred, calls), dtype="uint16")
    assert calls == []  # every full-resolution chunk was kept
    for level in (0, 1):
        image = zarrstain.open_image(path, level=level)
        assert list(image.c.values)[-1] == "DNA (predicted)"
    expected = np.clip(np.round(zarrstain.open_image(path).sel(c="BF").values * 0.5), 0, 65535)
    np.testing.assert_array_equal(
        zarrstain.open_image(path).sel(c="DNA (predicted)").values, expected
    )


@pytest.mark.parametrize("finished", ["every image", "some images"])
def test_images_finished_before_a_crash_are_listed_by_the_rerun(
    make_store, tmp_path, validate, monkeypatch, finished
):
    """Killed after its images were complete but before the plate listed them: the re-run
    (which has nothing, or less, to compute) lists them all."""
    import zarrstain.io.create as create_mod
    import zarrstain.io.write as write_mod
    from zarrstain.engine.pipeline import plan_prediction
    from zarrstain.testing import random_model

    src = make_store("plate", "0.5")
    model = random_model(seed=2)
    out = tmp_path / "out.zarr"
    if finished == "every image":
        _fail_on_call(monkeypatch, write_mod, "write_collection_metadata", 1)
    else:  # the third image's metadata is never written, the others' are
        _fail_on_call(monkeypatch, create_mod._NewImage, "finish", 3)
    with pytest.raises(SimulatedCrash):
        plan_prediction(src, model, out=out).run()
    monkeypatch.undo()
    again = plan_prediction(src, model, out=out)
    statuses = again.run()
    scenes = list(zarrstain.open_scenes(src))
    assert list(zarrstain.open_scenes(out)) == scenes  # every field, listed
    if finished == "every image":
        assert set(statuses.values()) == {"unchanged"} and again.blocks_run == 0
    else:
        assert sorted(statuses.values()).count("written") == 1  # the one left unfinished
    validate(out)
