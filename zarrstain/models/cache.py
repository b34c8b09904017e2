"""One copy of each model per process and device, found by content hash, never rebuilt per block.

Tasks carry a small :class:`ModelHandle` instead of the weights. In the process that called
``predict`` the handle finds the registered model directly; a handle unpickled in another process
(a dask worker) reloads the model once from its source file and checks the content hash, or
(for models that exist only in memory) unpickles the weights carried with it once.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from typing import Any

import torch
from torch import nn

from zarrstain.errors import ModelError, option
from zarrstain.models.device import check_device
from zarrstain.models.format import load_model
from zarrstain.models.model import Model

__all__ = [
    "ModelHandle",
    "forward_lock",
    "loads",
    "mark_published",
    "match_worker_threads",
    "placed_module",
    "preload",
    "resolve_device",
]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_MODELS: dict[str, Model] = {}
_PLACED: dict[tuple[str, str], nn.Module] = {}
_FORWARD_LOCKS: dict[str, threading.Lock] = {}
_THREADS_MATCHED = False
_PUBLISHED: set[str] = set()
#: how many times each content hash entered this process's cache (once, unless evicted)
loads: Counter[str] = Counter()


def _add(model: Model) -> Model:
    """Cache ``model`` unless its hash is cached already (caller holds ``_LOCK``)."""
    if model.content_hash not in _MODELS:
        loads[model.content_hash] += 1
        _MODELS[model.content_hash] = model
    return _MODELS[model.content_hash]


def _register(model: Model) -> Model:
    with _LOCK:
        return _add(model)


def preload(model: Model) -> None:
    """Put ``model`` in this process's cache (what the workers' model plugin does)."""
    _register(model)


def mark_published(content_hash: str) -> None:
    """Every worker preloads this model: handles need not carry its weights any more."""
    _PUBLISHED.add(content_hash)


def _load_from_source(content_hash: str, source: str, card: Any = None) -> Model:
    with _LOCK:
        if content_hash in _MODELS:
            return _MODELS[content_hash]
        model = load_model(source, card=card)
        if model.content_hash != content_hash:
            raise ModelError(
                f"the model at {source} changed while predicting (content hash "
                f"{model.content_hash[:12]} instead of {content_hash[:12]}); run again"
            )
        logger.info("loaded model %s from %s in this process", model.name, source)
        return _add(model)


class ModelHandle:
    """A picklable, tokenizable reference to a :class:`Model`.

    Parameters
    ----------
    model
        The model; it is registered in this process's cache.
    """

    def __init__(self, model: Model) -> None:
        self.content_hash = model.content_hash
        self.source = model.source
        self.card = model.source_card
        self.name = model.name
        self._model: Model | None = _register(model)

    @classmethod
    def _rebuild(
        cls, content_hash: str, source: str, card: Any, name: str, model: Model | None
    ) -> ModelHandle:
        handle = cls.__new__(cls)
        handle.content_hash, handle.source, handle.name = content_hash, source, name
        handle.card = card
        handle._model = _register(model) if model is not None else _MODELS.get(content_hash)
        return handle

    def __reduce__(self) -> tuple[Any, ...]:
        # Published models are on every worker already, models with a file travel as its path;
        # only in-memory models that were not published carry their weights.
        carried = None if self.source or self.content_hash in _PUBLISHED else self._model
        args = (self.content_hash, self.source, self.card, self.name, carried)
        return (ModelHandle._rebuild, args)

    def __dask_tokenize__(self) -> tuple[str, str]:
        return ("zarrstain-model", self.content_hash)

    def get(self) -> Model:
        """The model, loading it once per process when it is not cached yet."""
        if self._model is None:
            cached = _MODELS.get(self.content_hash)
            if cached is None and not self.source:
                raise ModelError(f"model {self.name} is not available in this process")
            self._model = cached or _load_from_source(self.content_hash, self.source, self.card)
        return self._model


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when this process sees a GPU, else CPU; ``"cpu"``; ``"cuda[:N]"``."""
    if check_device(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"device {device!r} was asked for but torch sees no CUDA GPU here; use "
            + option("device='cpu'", "--device cpu")
            + " or 'auto'"
        )
    return resolved


def placed_module(handle: ModelHandle, device: torch.device) -> nn.Module:
    """The handle's module on ``device``, moved there once per process."""
    key = (handle.content_hash, str(device))
    module = _PLACED.get(key)
    if module is None:
        model = handle.get()
        with _LOCK:
            module = _PLACED.get(key)
            if module is None:
                module = model.spec.inference_module(model.module.eval())
                if device.type != "cpu":
                    module = _copy_to(module, device)
                module.eval()
                _PLACED[key] = module
    return module


def _copy_to(module: nn.Module, device: torch.device) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(device)


def forward_lock(device: torch.device) -> threading.Lock:
    """One forward at a time per device and process.

    A forward pass already uses every core (torch's intra-op threads) or the whole GPU;
    concurrent forwards only oversubscribe. Other dask threads keep reading and writing.
    """
    key = str(device)
    with _LOCK:
        return _FORWARD_LOCKS.setdefault(key, threading.Lock())


def match_worker_threads() -> None:
    """In a dask.distributed worker, give torch as many threads as the worker has, once.

    A worker process with N threads was given N cores; torch's default (every core of the
    machine) would oversubscribe them when several workers share a machine. Outside a worker
    (the local threaded scheduler) torch keeps its default: forwards run one at a time.
    """
    global _THREADS_MATCHED
    if _THREADS_MATCHED:
        return
    _THREADS_MATCHED = True
    if "distributed" not in sys.modules:  # no worker runs us (and importing it takes ~0.1 s)
        return
    try:
        from distributed import get_worker
    except ImportError:  # pragma: no cover - distributed is a dependency
        return
    try:
        worker = get_worker()
    except ValueError:  # not in a worker
        return
    torch.set_num_threads(max(1, int(worker.state.nthreads)))
    logger.info("torch uses %d threads in worker %s", torch.get_num_threads(), worker.address)
