"""Distributed runs: worker processes, the model sent once per worker, GPU resources."""

from __future__ import annotations

import time

import numpy as np
import pytest
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster, get_task_stream

import zarrstain
from zarrstain.engine.cluster import connect, gpu_workers
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ParameterError
from zarrstain.models import cache
from zarrstain.progress import PREDICT_PREFIX
from zarrstain.testing import random_model

CHUNKS = {"y": 8, "x": 8}  # many small blocks: many tasks per worker


def _loads(content_hash: str) -> int:
    return cache.loads[content_hash]


@pytest.mark.slow
def test_worker_processes_load_the_model_once_and_match_a_local_run(make_store, tmp_path):
    src = make_store("plate", "0.5")
    model = random_model(seed=11)  # in memory only: it must travel by the worker plugin
    local = plan_prediction(src, model, out=tmp_path / "local.zarr", halo=4, chunks=CHUNKS)
    local.run()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        plan = plan_prediction(src, model, out=tmp_path / "dist.zarr", halo=4, chunks=CHUNKS)
        n_blocks = plan.n_blocks
        assert n_blocks >= 8 * 8
        seen = []
        plan.run(client=client, progress=seen.append)
        loads = client.run(_loads, model.content_hash)
        deadline = time.monotonic() + 10  # worker events reach the client asynchronously
        while len(seen) < n_blocks and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(loads.values()) == [1, 1]  # each worker process: once, for every block
    # progress: every block the workers ran, reported once, counted up to the plan's total
    assert [e.done for e in seen] == list(range(1, n_blocks + 1))
    assert {(e.stage, e.total) for e in seen} == {("predict", n_blocks)}
    for sid in ("A/1/0", "B/2/1"):
        a = zarrstain.open_image(tmp_path / "local.zarr", sid).values
        b = zarrstain.open_image(tmp_path / "dist.zarr", sid).values
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("resources", [{"GPU": 1}, None], ids=["given", "library-policy"])
def test_prediction_tasks_run_only_on_gpu_workers(make_store, tmp_path, resources):
    """A CPU stand-in: one worker advertises {"GPU": 1}; model tasks must all land there.

    Without resources the plan asks for them itself when the cluster has GPU workers.
    """
    src = make_store("image", "0.5")
    model = random_model(seed=12)
    workers = {
        "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu": {"cls": Nanny, "options": {"nthreads": 1}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        assert gpu_workers(client) == 1
        gpu = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        plan = plan_prediction(
            src, model, out=tmp_path / "out.zarr", chunks=CHUNKS, resources=resources
        )
        with get_task_stream(client) as stream:
            plan.run(client=client)
    ran = [(t["key"], t["worker"]) for t in stream.data]
    model_tasks = [w for k, w in ran if str(k).startswith(f"('{PREDICT_PREFIX}")]
    assert model_tasks and set(model_tasks) == {gpu}
    assert zarrstain.open_image(tmp_path / "out.zarr").sizes["c"] == 1


def test_connect_options():
    with connect() as client:
        assert client is None  # dask's threaded scheduler in this process
    with pytest.raises(ParameterError, match="not both"), connect("tcp://x:1", "f.json"):
        pass
    with pytest.raises(ParameterError, match="cannot be combined"), connect("tcp://x:1", workers=2):
        pass


@pytest.mark.slow
def test_cli_predict_on_a_local_cluster(make_store, tmp_path):
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    src = make_store("image", "0.4")
    model = zarrstain.save_model(random_model(seed=13), tmp_path / "m")
    out = tmp_path / "out.zarr"
    args = [
        "predict",
        str(src),
        "--model",
        str(model),
        "--out",
        str(out),
        "--workers",
        "1",
        "--threads-per-worker",
        "2",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "running on http" in result.output and ": written" in result.output
    expected = zarrstain.predict(zarrstain.open_image(src), zarrstain.load_model(model))
    np.testing.assert_allclose(zarrstain.open_image(out).values, expected.values, atol=1e-5)


@pytest.mark.slow
def test_a_killed_worker_costs_only_time(make_store, tmp_path):
    """SIGKILL one of two worker processes mid-run: it completes, equal to a clean run."""
    import os
    import signal
    import threading

    src = make_store("plate", "0.5")
    model = random_model(seed=14)
    plan_prediction(src, model, out=tmp_path / "clean.zarr", halo=4, chunks=CHUNKS).run()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        plan = plan_prediction(src, model, out=tmp_path / "faulty.zarr", halo=4, chunks=CHUNKS)
        killed = threading.Event()

        def kill_at_first_block(event) -> None:  # mid-run, however fast the blocks are
            if not killed.is_set():
                os.kill(victim, signal.SIGKILL)
                killed.set()

        result = plan.run(client=client, progress=kill_at_first_block)
        assert killed.is_set(), "the run ended before the worker was killed; make it longer"
        assert victim not in client.run(os.getpid).values()
    assert set(result.values()) == {"written"}
    for sid in zarrstain.open_scenes(tmp_path / "clean.zarr"):
        a = zarrstain.open_image(tmp_path / "clean.zarr", sid).values
        b = zarrstain.open_image(tmp_path / "faulty.zarr", sid).values
        np.testing.assert_array_equal(a, b)


def test_a_worker_lost_while_the_model_is_sent_does_not_fail_the_run(monkeypatch):
    """The broadcast is sent again to the survivors; a cluster that keeps failing still raises."""
    from distributed.comm.core import CommClosedError

    from zarrstain.engine import cluster

    monkeypatch.setattr(cluster.time, "sleep", lambda seconds: None)

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures, self.calls = failures, []
            self.scheduler = type("S", (), {"address": "tcp://flaky"})()

        def register_plugin(self, plugin) -> None:
            self.calls.append(plugin.name)
            if len(self.calls) <= self.failures:
                raise CommClosedError("in <TCP Scheduler Broadcast>: Stream is closed")

    model = random_model(seed=3)
    client = Flaky(failures=1)
    cluster.publish_model(client, model)
    assert client.calls == [f"zarrstain-model-{model.content_hash[:16]}"] * 2
    with pytest.raises(CommClosedError):
        cluster.publish_model(Flaky(failures=cluster.PUBLISH_ATTEMPTS), random_model(seed=4))
