"""Where prediction runs: dask's local threads, a LocalCluster, GPU workers or any scheduler.

- No options: dask's threaded scheduler in this process (one forward at a time per device,
  reads and writes in the other threads).
- ``workers=N``: a LocalCluster of N worker processes (``threads_per_worker`` each).
- On a machine with CUDA GPUs and ``gpus="auto"``: one worker per GPU, each seeing only its
  GPU (dask-cuda's ``LocalCUDACluster`` when installed, else a worker spec with
  ``CUDA_VISIBLE_DEVICES``), with :data:`GPU_SLOTS` threads and the resource
  ``{"GPU": GPU_SLOTS}``: a block task (read, predict, write) takes one slot, and one forward
  runs at a time per device (the model's lock), so the next block is read and the last one
  written while the GPU computes.
- ``scheduler=ADDRESS`` / ``scheduler_file=FILE``: an existing dask.distributed cluster
  (dask-jobqueue on SLURM, Kubernetes, ...).

Models reach each worker once: :func:`publish_model` registers a worker plugin keyed by the
model's content hash, and prediction tasks then carry only the hash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster
from distributed.comm.core import CommClosedError
from distributed.diagnostics.plugin import WorkerPlugin

from zarrstain.errors import ParameterError, option
from zarrstain.models import cache
from zarrstain.models.model import Model

__all__ = ["ModelPlugin", "connect", "gpu_workers", "publish_model"]

logger = logging.getLogger(__name__)


class ModelPlugin(WorkerPlugin):
    """Puts one model into each worker's cache when the worker starts (or joins later)."""

    def __init__(self, model: Model) -> None:
        # A model loaded from a file travels as its path and is loaded once by each worker
        # (a TorchScript module cannot be pickled); one built in memory travels whole.
        self.model = None if model.source else model
        self.handle = cache.ModelHandle(model)
        self.name = f"zarrstain-model-{model.content_hash[:16]}"

    def setup(self, worker: Any) -> None:
        cache.preload(self.model if self.model is not None else self.handle.get())


#: how often a publication is retried when a worker is lost while it is being sent
PUBLISH_ATTEMPTS = 3


def publish_model(client: Client, model: Model) -> None:
    """Send ``model`` to every worker of ``client`` once; tasks then carry only its hash.

    A worker lost during the broadcast (killed, preempted) fails the broadcast but not the
    registration: the scheduler keeps the plugin for workers that join later and drops the
    lost one, so sending again reaches the survivors. A lost worker costs time, not the run.
    """
    plugin = ModelPlugin(model)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            client.register_plugin(plugin)
            break
        except (CommClosedError, OSError) as error:
            if attempt == PUBLISH_ATTEMPTS:
                raise
            logger.warning("a worker was lost while the model was sent (%s); sending again", error)
            time.sleep(0.5 * attempt)
    cache.mark_published(model.content_hash)
    logger.info("model %s published to the workers of %s", model.name, client.scheduler.address)


def gpu_workers(client: Client) -> int:
    """How many workers advertise a GPU resource."""
    info = client.scheduler_info()["workers"].values()
    return sum(1 for w in info if (w.get("resources") or {}).get("GPU"))


def gpu_resources(client: Client) -> dict[str, float] | None:
    """The resources model tasks should ask for on ``client``'s cluster.

    ``{"GPU": 1}`` when some workers advertise a GPU (block tasks then run only there, as many
    at a time per worker as it advertises units, one forward at a time per device); None
    otherwise.
    """
    return {"GPU": 1} if gpu_workers(client) else None


#: block tasks in flight per GPU worker (see the module's docstring)
GPU_SLOTS = 3


def _gpu_cluster(n_gpus: int) -> SpecCluster | LocalCluster:
    try:
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(resources={"GPU": GPU_SLOTS}, threads_per_worker=GPU_SLOTS)
    except ImportError:
        pass
    workers = {
        f"gpu-{i}": {
            "cls": Nanny,
            "options": {
                "nthreads": GPU_SLOTS,
                "env": {"CUDA_VISIBLE_DEVICES": str(i)},
                "resources": {"GPU": GPU_SLOTS},
            },
        }
        for i in range(n_gpus)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    return SpecCluster(workers=workers, scheduler=scheduler)


def _remote_client(scheduler: str | None, scheduler_file: str | os.PathLike | None) -> Client:
    """A client of a running cluster; a missing file or an unreachable address is refused.

    (dask waits for a scheduler file to appear, forever: a typo would hang the command.)
    """
    if scheduler_file and not os.path.isfile(scheduler_file):
        raise ParameterError(
            f"no scheduler file at {os.fspath(scheduler_file)!r}; start the cluster first or "
            f"check the path ({option('scheduler_file=', '--scheduler-file')})"
        )
    where = scheduler or os.fspath(scheduler_file)
    try:
        if scheduler_file:
            return Client(scheduler_file=os.fspath(scheduler_file), timeout="20s")
        return Client(scheduler, timeout="20s")
    except OSError as exc:  # distributed raises OSError (TimeoutError) for unreachable hosts
        raise ParameterError(
            f"cannot reach the dask scheduler at {where} ({exc}); check that it runs and the "
            f"address ({option('scheduler=', '--scheduler')})"
        ) from None


@contextlib.contextmanager
def connect(
    scheduler: str | None = None,
    scheduler_file: str | os.PathLike | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    *,
    gpus: str = "auto",
) -> Iterator[Client | None]:
    """A dask client for the run, or None for dask's local threaded scheduler.

    Parameters
    ----------
    scheduler, scheduler_file
        An existing scheduler (address, or the file dask-jobqueue / ``dask scheduler`` wrote).
    workers, threads_per_worker
        Start a LocalCluster of worker processes.
    gpus
        ``"auto"``: with CUDA GPUs and no other option, one worker per GPU; ``"none"``: never.

    Yields
    ------
    distributed.Client or None
        The client is the default scheduler while the context is open; it and any cluster it
        started are closed on exit.
    """
    if scheduler and scheduler_file:
        raise ParameterError("pass --scheduler or --scheduler-file, not both")
    remote = scheduler or scheduler_file
    if remote and (workers or threads_per_worker):
        raise ParameterError(
            "--workers/--threads-per-worker start a local cluster; "
            "they cannot be combined with --scheduler"
        )
    for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
        if value is not None and value < 1:
            flag = option(f"{name}=", "--" + name.replace("_", "-"))
            raise ParameterError(f"{flag} must be at least 1, not {value}")
    n_gpus = torch.cuda.device_count() if gpus == "auto" else 0
    if not remote and not workers and not threads_per_worker and not n_gpus:
        yield None
        return
    cluster = None
    if remote:
        client = _remote_client(scheduler, scheduler_file)
    else:
        if n_gpus and not workers:
            cluster = _gpu_cluster(n_gpus)
        else:
            cluster = LocalCluster(
                n_workers=workers or 1,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address=":0",
            )
        client = Client(cluster)
    logger.debug("dask dashboard: %s", client.dashboard_link)  # the CLI prints it
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
