"""``zarrstain watch``: a time-lapse stained while another process writes it (issue 32)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import assert_same

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ChannelExistsError, ParameterError, UnsupportedError
from zarrstain.live import time_statistics, watch
from zarrstain.live.output import predicted_time_points
from zarrstain.testing import assert_valid_store

WRITER = Path(__file__).with_name("stream_writer.py")
T = 5
SHAPE = (T, 8, 32, 32)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Finished acquisitions the writer process replays: an image per NGFF version, a plate."""
    base = tmp_path_factory.mktemp("acquired")
    refs = {
        version: datasets.make_image(base / f"image{version}.zarr", shape=SHAPE,
                                     ngff_version=version, seed=1)
        for version in ("0.4", "0.5")
    }  # fmt: skip
    for version in ("0.4", "0.5"):
        refs["plate", version] = datasets.make_plate(
            base / f"plate{version}.zarr", rows=("A",), columns=("1", "2"), fields=1,
            shape=(3, 8, 32, 32), ngff_version=version, seed=2,
        )  # fmt: skip
    return refs


def start_writer(kind, reference, live, tmp_path, *, interval=0.3, stall_at=None,
                 preallocate=False):  # fmt: skip
    cmd = [sys.executable, str(WRITER), kind, str(reference), str(live),
           "--interval", str(interval), "--log", str(tmp_path / "writer.log")]  # fmt: skip
    if stall_at is not None:
        cmd += ["--stall-at", str(stall_at)]
    if preallocate:
        cmd += ["--preallocate"]
    return subprocess.Popen(cmd)


def writer_log(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "writer.log").read_text().splitlines()]


def predicted(path, scene=None):
    image = zarrstain.open_image(path, scene=scene) if scene else zarrstain.open_image(path)
    return image.sel(c="DNA (predicted)").values


def predict_finished(store, model, tmp_path, **kwargs):
    """``zarrstain predict`` on the finished acquisition, into a new store."""
    out = tmp_path / "predict.zarr"
    plan_prediction(store, model, out=out, halo="exact", **kwargs).run()
    return out


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_growing_image_is_stained_as_predict_stains_the_finished_one(
    references, tmp_path, model3d, version, schema_dir
):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    writer = start_writer("zarr", references[version], live, tmp_path)
    seen = []

    def reader(event):  # a reader during the run: valid metadata, complete time points only
        image = zarrstain.open_image(out)
        seen.append((event.done, image.sizes["t"]))
        assert_valid_store(out, schema_dir)

    try:
        result = watch(live, model3d, out=out, until=T, idle_timeout=60, halo="exact",
                       max_batch=1, progress=reader)  # fmt: skip
    finally:
        writer.wait(timeout=60)
    assert result.ended == "count" and result.written == {"": T} and len(result.latencies) == T
    assert [t for done, t in seen] == [done for done, t in seen]  # what is shown is done
    # stained while it grew: the first time point was readable before the writer wrote the last
    log = writer_log(tmp_path)
    assert len(seen) == T and log[-2]["t"] == T - 1
    assert_same(predicted(out), predicted(predict_finished(live, model3d, tmp_path)))
    assert_valid_store(out, schema_dir)
    record = zarr.open_group(out).attrs["zarrstain"]["channels"]["DNA (predicted)"]
    assert record["time_points"] == [[0, T]] and record["live"]["statistics"] == "frame"
    # the output's metadata are the source's: axes, scales, every pyramid level
    src, dst = zarrstain.open_image(live), zarrstain.open_image(out)
    assert dst.attrs["scale"] == src.attrs["scale"] and dst.attrs["axes"] == src.attrs["axes"]
    assert [lv["shape"][2:] for lv in dst.attrs["levels"]] == [
        lv["shape"][2:] for lv in src.attrs["levels"]
    ]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_growing_plate_is_stained_field_by_field(
    references, tmp_path, model3d, schema_dir, version
):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    writer = start_writer("zarr", references["plate", version], live, tmp_path, interval=0.2)
    try:
        result = watch(live, model3d, out=out, until=3, idle_timeout=60, halo="exact")
    finally:
        writer.wait(timeout=60)
    assert result.time_points == {"A/1/0": 3, "A/2/0": 3}
    expected = predict_finished(live, model3d, tmp_path)
    for scene in ("A/1/0", "A/2/0"):
        assert_same(predicted(out, scene), predicted(expected, scene))
    assert_valid_store(out, schema_dir)


@pytest.mark.parametrize("mode", ["frame", "running"])
def test_an_acquire_zarr_stream_is_stained_while_it_grows(references, tmp_path, model3d, mode):
    pytest.importorskip("acquire_zarr")
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    writer = start_writer("acquire", references["0.5"], live, tmp_path, interval=0.4)
    times = []
    try:
        result = watch(live, model3d, out=out, idle_timeout=60, halo="exact",
                       input_channels={"BF": "0"}, statistics=mode,
                       progress=lambda e: times.append(time.time()))  # fmt: skip
    finally:
        writer.wait(timeout=60)
    # acquire-zarr writes the image's OME metadata when it closes: the signal that it is over
    assert result.ended == "closed" and result.time_points == {"": T}
    closed = writer_log(tmp_path)[-1]["closed"]
    assert times[0] < closed  # predictions were readable while the writer still wrote
    scene = zarrstain.open_image(live)
    if mode == "frame":  # zarrstain predict (the store-to-store pipeline) on the finished one
        expected = predict_finished(live, model3d, tmp_path, input_channels={"BF": "0"})
        assert_same(predicted(out), predicted(expected))
    else:  # the same statistics given to zarrstain.predict
        frames = zarrstain.normalization_stats(scene.sel(c=["0"]), "center").compute()
        finished = zarrstain.predict(scene, model3d, halo="exact", input_channels={"BF": "0"},
                                     stats=time_statistics(frames, mode))  # fmt: skip
        assert_same(predicted(out), finished.values[:, 0])
    # the scales the writer declared, adopted once its metadata appeared
    assert zarrstain.open_image(out).attrs["scale"] == scene.attrs["scale"]
    assert scene.attrs["scale"]["z"] == 2.0


def test_an_ome_zarr_py_image_appended_by_zarr_is_stained(references, tmp_path, model3d):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    writer = start_writer("ome-zarr", references["0.5"], live, tmp_path, interval=0.3)
    try:  # (ome-zarr-py names no channels: they are "0", "1", "2")
        result = watch(live, model3d, out=out, until=T, idle_timeout=60, halo="exact",
                       input_channels={"BF": "0"})  # fmt: skip
    finally:
        writer.wait(timeout=60)
    assert result.written == {"": T}
    expected = predict_finished(live, model3d, tmp_path, input_channels={"BF": "0"})
    assert_same(predicted(out), predicted(expected))
    assert zarrstain.open_image(out).attrs["scale"] == zarrstain.open_image(live).attrs["scale"]


def test_a_stalled_writer_never_yields_a_partly_predicted_time_point(references, tmp_path, model3d):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    writer = start_writer("zarr", references["0.5"], live, tmp_path, interval=0.1, stall_at=2)
    try:
        while (
            not (tmp_path / "writer.log").exists()
            or "stalled" not in (tmp_path / "writer.log").read_text()
        ):
            time.sleep(0.1)
        # time point 2: its input channel written in full, the others not: never predicted
        assert zarr.open_group(live)["s0"].shape[0] == 3
        result = watch(live, model3d, out=out, idle_timeout=2, halo="exact")
    finally:
        writer.kill()
        writer.wait()
    assert result.ended == "idle" and result.time_points == {"": 2}
    assert zarr.open_group(out)["s0"].shape[0] == 2


def test_a_killed_watch_restarts_without_losing_or_repeating_a_time_point(
    references, tmp_path, model3d
):
    from zarrstain.models import save_model

    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    start_writer("zarr", references["0.5"], live, tmp_path, interval=0.01).wait(timeout=60)
    save_model(model3d, tmp_path / "model")
    cmd = [sys.executable, "-m", "zarrstain.cli.main", "watch", str(live), "-m",
           str(tmp_path / "model"), "--out", str(out), "--until", str(T), "--max-batch", "1",
           "--halo", "exact"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            meta = out / "zarr.json"
            done = meta.exists() and "multiscales" in meta.read_text()
            if done and zarr.open_group(out)["s0"].shape[0] >= 2:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = zarr.open_group(out)["s0"].shape[0]
    assert 2 <= before < T, "the watch process was killed too late to test a restart"
    result = watch(live, model3d, out=out, until=T, halo="exact")
    assert result.written == {"": T - before}  # none repeated, none lost
    assert_same(predicted(out), predicted(predict_finished(live, model3d, tmp_path)))


def test_a_crash_between_a_batch_and_its_metadata_is_redone(references, tmp_path, model3d,
                                                            monkeypatch):  # fmt: skip
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    start_writer("zarr", references["0.4"], live, tmp_path, interval=0.01).wait(timeout=60)
    watch(live, model3d, out=out, until=2, halo="exact")
    real = zarr.Array.resize
    calls = []

    def crash(self, shape):  # chunks of time points 2-3 written, the levels not yet grown
        calls.append(shape)
        raise OSError("disk gone")

    monkeypatch.setattr(zarr.Array, "resize", crash)
    with pytest.raises(OSError, match="disk gone"):
        watch(live, model3d, out=out, until=4, halo="exact", max_batch=2)
    monkeypatch.setattr(zarr.Array, "resize", real)
    assert calls and zarr.open_group(out)["s0"].shape[0] == 2  # readers still see 2
    result = watch(live, model3d, out=out, until=T, halo="exact")
    assert result.written == {"": T - 2}
    assert_same(predicted(out), predicted(predict_finished(live, model3d, tmp_path)))


@pytest.mark.parametrize("mode", ["first:2", "fixed:100,20"])
def test_statistics_modes_equal_predict_with_the_same_statistics(
    references, tmp_path, model3d, mode
):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    start_writer("zarr", references["0.5"], live, tmp_path, interval=0.01).wait(timeout=60)
    result = watch(live, model3d, out=out, until=T, halo="exact", statistics=mode, max_batch=2)
    assert result.written == {"": T}
    scene = zarrstain.open_image(live)
    frames = zarrstain.normalization_stats(scene.sel(c=["BF"]), "center").compute()
    stats = time_statistics(frames, mode)
    finished = zarrstain.predict(scene, model3d, halo="exact", stats=stats)
    assert_same(predicted(out), finished.values[:, 0])
    if mode == "fixed:100,20":
        assert np.all(stats["offset"].values == 100) and np.all(stats["scale"].values == 20)


def test_a_slow_model_warns_with_both_rates_and_catches_up_in_batches(
    references, tmp_path, model3d, caplog
):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    start_writer("zarr", references["0.5"], live, tmp_path, interval=0.01).wait(timeout=60)
    with caplog.at_level(logging.WARNING, logger="zarrstain.live"):
        result = watch(live, model3d, out=out, until=T, halo="exact", max_batch=2, max_lag=1,
                       latency_target=0.001)  # fmt: skip
    assert result.written == {"": T}
    messages = [r.getMessage() for r in caplog.records]
    warning = next(m for m in messages if "wait to be predicted" in m)
    assert "time points/s" in warning and "nothing is lost" in warning
    late = [m for m in messages if "(target 0.00 s)" in m]
    assert len(late) == 1 and "use a GPU" in late[0]  # once, while the target stays missed


def test_refusals_leave_nothing_behind(references, tmp_path, model3d):
    live = tmp_path / "live.zarr"
    start_writer("zarr", references["0.5"], live, tmp_path, interval=0.01).wait(timeout=60)
    with pytest.raises(UnsupportedError, match="in place needs the acquisition's length"):
        watch(live, model3d)
    with pytest.raises(UnsupportedError, match="appends time points"):  # not allocated up front
        watch(live, model3d, until=T + 1)
    with pytest.raises(ParameterError, match="is the store being watched"):
        watch(live, model3d, out=live)
    with pytest.raises(ParameterError, match="first:N"):
        watch(live, model3d, out=tmp_path / "o.zarr", statistics="mean")
    with pytest.raises(ParameterError, match="max_batch"):
        watch(live, model3d, out=tmp_path / "o.zarr", max_batch=0)
    assert not (tmp_path / "o.zarr").exists()
    # an output of other settings is never extended
    watch(live, model3d, out=tmp_path / "o.zarr", until=1, halo="exact")
    with pytest.raises(ChannelExistsError, match="another model or other settings"):
        watch(live, model3d, out=tmp_path / "o.zarr", until=2, halo="exact", statistics="running")


def test_nothing_to_follow_yet_ends_after_the_idle_timeout(tmp_path, model3d, caplog):
    result = watch(tmp_path / "not-yet.zarr", model3d, out=tmp_path / "o.zarr", idle_timeout=0.5)
    assert result.ended == "idle" and result.time_points == {}
    assert not (tmp_path / "o.zarr").exists()
    # a folder that is no OME-Zarr (yet): said once, and again when the run ends
    (tmp_path / "not-ome.zarr").mkdir()
    with caplog.at_level(logging.WARNING, logger="zarrstain.live"):
        result = watch(tmp_path / "not-ome.zarr", model3d, out=tmp_path / "o.zarr",
                       idle_timeout=1.5, poll=0.05)  # fmt: skip
    messages = [r.getMessage() for r in caplog.records]
    assert sum("not readable yet" in m for m in messages) == 1
    assert any("nothing could be followed" in m for m in messages)


def test_the_cli_follows_a_store_and_prints_what_it_did(references, tmp_path, model3d):
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    from zarrstain.models import save_model

    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    start_writer("zarr", references["0.4"], live, tmp_path, interval=0.01).wait(timeout=60)
    save_model(model3d, tmp_path / "model")
    args = ["watch", str(live), "-m", str(tmp_path / "model"), "--out", str(out), "--until", "3"]
    run = CliRunner().invoke(cli, [*args, "--json"])
    assert run.exit_code == 0, run.output
    assert "watching: 3 time point(s) predicted, lag 0, latency" in run.stderr  # progress
    summary = json.loads(run.stdout)
    assert summary["ended"] == "count" and summary["time_points"] == {"": 3}
    run = CliRunner().invoke(cli, [*args[:-1], "4"])  # continues
    assert run.exit_code == 0 and "4 time point(s) (1 by this run)" in run.stdout
    run = CliRunner().invoke(cli, [*args, "--statistics", "first:x"])
    assert run.exit_code == 1 and "first:N" in run.output
    run = CliRunner().invoke(cli, ["watch", str(live), "-m", str(tmp_path / "model")])
    assert (
        run.exit_code == 1 and "in place needs the acquisition's length (--until N)" in run.output
    )


def test_in_place_where_the_writer_allocated_the_whole_acquisition(
    references, tmp_path, model3d, schema_dir
):
    # target units (a trained model's), so that predictions round meaningfully into uint16
    model = dataclasses.replace(model3d, output_intensity=((100.0, 1000.0),))
    live = tmp_path / "live.zarr"
    writer = start_writer("zarr", references["0.5"], live, tmp_path, preallocate=True)
    try:
        result = watch(live, model, until=T, idle_timeout=60, halo="exact", max_batch=2)
    finally:
        writer.wait(timeout=60)
    assert result.ended == "count" and result.written == {"": T}
    image = zarrstain.open_image(live)
    assert list(image.coords["c"].values) == ["BF", "DNA", "Membrane", "DNA (predicted)"]
    record = zarr.open_group(live).attrs["zarrstain"]["channels"]["DNA (predicted)"]
    assert record["time_points"] == [[0, T]]
    expected = tmp_path / "predict.zarr"
    plan_prediction(live, model, out=expected, halo="exact", dtype="uint16").run()
    np.testing.assert_allclose(predicted(live), predicted(expected), atol=1)
    assert_valid_store(live, schema_dir)
    # restarted: everything is there already
    assert watch(live, model, until=T, halo="exact").written == {}


def test_ctrl_c_ends_the_cli_with_a_complete_output_that_a_rerun_continues(
    references, tmp_path, model3d
):
    from zarrstain.models import save_model

    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    save_model(model3d, tmp_path / "model")
    writer = start_writer("zarr", references["0.5"], live, tmp_path, interval=0.5)
    cmd = [sys.executable, "-m", "zarrstain.cli.main", "watch", str(live), "-m",
           str(tmp_path / "model"), "--out", str(out), "--until", str(T),
           "--halo", "exact"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    meta = out / "zarr.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (
            meta.exists() and "multiscales" in meta.read_text()
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        writer.wait(timeout=60)
    assert proc.returncode == 130 and "stopped (Ctrl-C)" in stderr, stderr
    before = predicted_time_points(zarr.open_group(out), "out")
    assert 1 <= before < T
    result = watch(live, model3d, out=out, until=T, halo="exact")
    assert result.written == {"": T - before}
    assert_same(predicted(out), predicted(predict_finished(live, model3d, tmp_path)))


def test_a_stop_event_ends_a_run_from_another_thread(tmp_path, model3d):
    import threading

    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    result = watch(tmp_path / "not-yet.zarr", model3d, out=tmp_path / "o.zarr", stop=stop)
    assert result.ended == "stopped" and time.monotonic() - started < 5


def test_a_running_mean_continues_across_a_restart(references, tmp_path, model3d):
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    start_writer("zarr", references["0.4"], live, tmp_path, interval=0.01).wait(timeout=60)
    watch(live, model3d, out=out, until=2, halo="exact", statistics="running")
    # the restarted run reads the statistics of time points 0-1 again, not their predictions
    assert watch(live, model3d, out=out, until=T, halo="exact", statistics="running").written == {
        "": T - 2
    }
    scene = zarrstain.open_image(live)
    frames = zarrstain.normalization_stats(scene.sel(c=["BF"]), "center").compute()
    finished = zarrstain.predict(scene, model3d, halo="exact",
                                 stats=time_statistics(frames, "running"))  # fmt: skip
    assert_same(predicted(out), finished.values[:, 0])
