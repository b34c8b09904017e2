"""``zarrstain.train``: fit a registered architecture on paired channels of OME-Zarr stores.

The architecture (fnet by default) supplies the module, its heads and its loss
(:class:`zarrstain.models.Architecture`); the loop, sampler and checkpoints are shared. For
fnet this is pytorch_fnet's recipe (Adam, lr 1e-3, MSE on normalized patches, random xy flips)
with defaults sized for a CPU: ``TrainConfig()`` gives a useful model in minutes,
``TrainConfig.paper()`` the published settings. Checkpoints are zarrstain model packages
(``predict`` loads them) with a ``training_state.pt`` beside the weights (optimizer, step,
sampler state, history), so ``resume=True`` continues a run exactly
where its last checkpoint left it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from ..errors import ParameterError, option
from ..io.read import open_scenes
from ..io.store import store_location
from ..metrics import pearson
from ..models import Model, create_model, load_model, save_model
from ..models.architecture import Architecture, BlockContext, Geometry
from ..models.cache import resolve_device
from ..models.card import is_package
from ..models.model import state_dict_hash
from ..models.registry import ALIASES, ARCHITECTURES
from ..normalize import METHODS
from ..progress import ProgressCallback, ProgressEvent
from .sampler import PatchSampler, split_regions

__all__ = ["TrainConfig", "TrainResult", "build_config", "train", "training_models"]


def training_models() -> list[str]:
    """Names ``TrainConfig.model`` accepts: the fnet aliases and every registered architecture."""
    return [*ALIASES, *(name for name in ARCHITECTURES if name != "fnet")]


logger = logging.getLogger(__name__)

STATE = "training_state.pt"


@dataclass
class TrainConfig:
    """Everything that defines a training run (a ``--config`` TOML file holds these keys)."""

    inputs: list[str]
    targets: list[str]
    model: str = "fnet3d"  # "fnet2d", or any registered architecture's name
    model_kwargs: dict[str, Any] | None = None  # the architecture's own arguments
    depth: int = 4
    mult_chan: int = 8  # pytorch_fnet: 32 (``paper()``)
    projection: int = 0  # > 0: learned per-pixel projection of the inputs (In silico labeling)
    steps: int = 400
    batch_size: int = 4
    patch: list[int] | None = None  # default 32×64×64 (3D) or 256×256 (2D), cut to fit
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    normalization: str = "center"
    scenes: list[str] | None = None
    val_scenes: list[str] | None = None
    val_fraction: float | None = None
    val_patches: int = 16
    validate_every: int = 50
    checkpoint_every: int = 100
    device: str = "auto"

    @classmethod
    def paper(cls, **kwargs: Any) -> TrainConfig:
        """pytorch_fnet's published settings: 32 channels, batch 24, 50,000 steps, β1 0.5."""
        return cls(
            **{
                "mult_chan": 32,
                "batch_size": 24,
                "steps": 50_000,
                "betas": (0.5, 0.999),
                "validate_every": 1000,
                "checkpoint_every": 5000,
                **kwargs,
            }
        )

    def architecture(self) -> tuple[Architecture, dict[str, Any]]:
        """The registered architecture ``model`` names, and the module arguments it implies."""
        name, fixed = ALIASES.get(self.model, (self.model, {}))
        if name not in ARCHITECTURES:
            raise ParameterError(
                f"model {self.model!r} is not a registered architecture; choose one of "
                f"{', '.join(training_models())} ({option('model=', '--model')})"
            )
        spec = ARCHITECTURES[name]
        return spec, {**spec.train_kwargs(self), **fixed}

    @property
    def geometry(self) -> Geometry:
        """The geometry of the model this config trains."""
        spec, kwargs = self.architecture()
        return spec.geometry(kwargs)

    @property
    def ndim(self) -> int:
        """Spatial dims of the model."""
        return self.geometry.spatial_dims

    def check(self) -> None:
        """Refuse settings the model or optimiser cannot use, before any data is read.

        Raises
        ------
        ParameterError
            Naming the setting (its CLI flag under the CLI), the value and what would work.
        """
        ndim = self.ndim
        for name in ("depth", "mult_chan", "steps", "batch_size", "val_patches"):
            _positive_int(name, getattr(self, name))
        for name in ("validate_every", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        if isinstance(self.projection, bool) or not isinstance(self.projection, int):
            raise ParameterError(
                f"{_flag('projection')} must be a whole number, not {self.projection!r}"
            )
        if self.projection < 0:
            raise ParameterError(f"{_flag('projection')} must be 0 or more, not {self.projection}")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ParameterError(f"{_flag('lr')} must be a positive number, not {self.lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ParameterError(f"betas must be two numbers in [0, 1), not {list(self.betas)}")
        if self.normalization not in METHODS:
            raise ParameterError(
                f"normalization {self.normalization!r} is not one of {', '.join(METHODS)}"
            )
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise ParameterError(
                f"{_flag('val_fraction')} must be between 0 and 1 (the held-out share of each "
                f"scene's width), not {self.val_fraction}"
            )
        if self.patch is not None:
            self._check_patch(ndim)

    def _check_patch(self, ndim: int) -> None:
        axes = "z×y×x" if ndim == 3 else "y×x"
        div = self.geometry.divisor
        example = "32x64x64" if ndim == 3 else "256x256"
        if len(self.patch) != ndim:
            raise ParameterError(
                f"{_flag('patch')} {'x'.join(map(str, self.patch))} has {len(self.patch)} "
                f"size(s) but the {self.model} model needs {ndim} ({axes}, e.g. {example})"
            )
        bad = [p for p in self.patch if not isinstance(p, int) or p < div or p % div]
        if bad:
            fixed = "x".join(str(max(div, -(-int(p) // div) * div)) for p in self.patch)
            raise ParameterError(
                f"{_flag('patch')} {'x'.join(map(str, self.patch))}: every size must be a "
                f"multiple of {div} (the {self.model} model's divisor: it halves each axis "
                f"{div.bit_length() - 1} times); use {fixed}"
            )


def _flag(name: str) -> str:
    return option(name, "--" + name.replace("_", "-"))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{_flag(name)} must be a whole number ≥ 1, not {value!r}")


def build_config(
    file: str | os.PathLike | None = None, *, paper: bool = False, **overrides: Any
) -> TrainConfig:
    """A :class:`TrainConfig` from a TOML file, ``paper`` defaults and keyword overrides.

    Unknown keys and missing inputs/targets raise :class:`~zarrstain.errors.ParameterError`.
    """
    values: dict[str, Any] = {}
    if file is not None:
        try:
            values = tomllib.loads(Path(file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ParameterError(f"cannot read the config {file}: {exc}") from None
    values.update({k: v for k, v in overrides.items() if v not in (None, [], ())})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParameterError(f"unknown training setting {unknown[0]!r}; known: {sorted(known)}")
    for key in ("inputs", "targets"):
        if not values.get(key):
            flag = "--input" if key == "inputs" else "--target"
            raise ParameterError(f"no {key} given; name the channels with {flag} LABEL")
        if isinstance(values[key], str):
            values[key] = [values[key]]
    if "betas" in values:
        values["betas"] = tuple(values["betas"])
    config = TrainConfig.paper(**values) if paper else TrainConfig(**values)
    config.check()
    return config


@dataclass
class TrainResult:
    """The trained model, its package folder and the loss / validation history."""

    model: Model
    package: Path
    history: list[dict[str, float]] = field(default_factory=list)


def _patch(config: TrainConfig, scenes: dict) -> tuple[int, ...]:
    if config.patch:
        return tuple(config.patch)
    default = (32, 64, 64) if config.ndim == 3 else (256, 256)
    div = config.geometry.divisor
    smallest = {a: min(im.sizes[a] for im in scenes.values()) for a in ("z", "y", "x")}
    axes = ("z", "y", "x")[-config.ndim :]
    # as pytorch_fnet's default when it fits, else the largest multiple of the divisor that does
    return tuple(
        min(p, max(div, smallest[a] // div * div)) for p, a in zip(default, axes, strict=True)
    )


def _open(stores: Sequence[str | os.PathLike], wanted: list[str] | None) -> dict:
    scenes = {}
    for i, store in enumerate(stores):
        for sid, image in open_scenes(store).items():
            key = sid if len(stores) == 1 else f"{i}:{sid}"
            if wanted is None or key in wanted:
                scenes[key] = image
    if not scenes:
        available = [sid if len(stores) == 1 else f"{i}:{sid}" for i, s in enumerate(stores)
                     for sid in open_scenes(s)]  # fmt: skip
        raise ParameterError(
            f"none of the scenes {list(wanted or [])} is in {', '.join(map(str, stores))}; "
            f"available: {', '.join(available[:8])}" + (" ..." if len(available) > 8 else "")
        )
    return scenes


def train(
    stores: Sequence[str | os.PathLike] | str | os.PathLike,
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a model on paired channels of OME-Zarr stores and save it as a model package.

    Parameters
    ----------
    stores
        One or more OME-Zarr stores (scene ids get an ``"<index>:"`` prefix with several).
    config
        Inputs, targets, architecture and optimisation settings.
    out
        The model package folder (written at every checkpoint, atomically).
    resume
        Continue the run saved in ``out`` (same config) from its last checkpoint.
    overwrite
        Replace the model package at ``out``. Without it (or ``resume``) an existing ``out``
        is refused before anything is trained: a trained model is never replaced by accident.
    progress
        Called after every step with a ``"train"`` :class:`~zarrstain.progress.ProgressEvent`:
        ``done`` is the step (1-based) of ``config.steps``, ``info`` holds ``"loss"`` (plus
        ``"val_pcc"`` after validations).

    Returns
    -------
    TrainResult
    """
    single = isinstance(stores, str | os.PathLike | zarr.Group)
    stores = [stores] if single else list(stores)
    out = Path(out)
    config.check()
    _check_out(out, resume=resume, overwrite=overwrite)
    scenes = _open(stores, config.scenes)
    train_regions, val_regions = split_regions(
        scenes, val_scenes=config.val_scenes, val_fraction=config.val_fraction
    )
    patch = _patch(config, scenes)
    sampler_for = functools.partial(
        PatchSampler, scenes, inputs=config.inputs, targets=config.targets, patch=patch,
        normalization=config.normalization,
    )  # fmt: skip
    sampler = sampler_for(train_regions, seed=config.seed)
    val = None
    if val_regions:  # a fixed set of held-out patches, not augmented
        val = sampler_for(val_regions, seed=config.seed + 1, flips=False).sample(config.val_patches)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # the initial weights
    spec, kwargs = config.architecture()
    heads = spec.heads(kwargs)
    model = create_model(
        spec.name,
        input_labels=config.inputs,
        output_labels=[h.label(t) for t in config.targets for h in heads],
        normalization=config.normalization,
        name=out.name,
        output_intensity=[i for i in sampler.target_intensity() for _ in heads],
        **kwargs,
    )
    module = model.module.to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr, betas=config.betas)
    start, history = 0, []
    if resume:
        start, history = _restore(out, model, optimizer, sampler)
    record = _provenance(stores, config, patch, scenes, train_regions, val_regions)
    record["loss"] = spec.loss_name
    loss_fn = spec.loss
    t0 = time.perf_counter()
    for step in range(start + 1, config.steps + 1):
        module.train()
        x, y = sampler.sample(config.batch_size)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(_forward(spec, module, x), y)
        loss.backward()
        optimizer.step()
        entry = {"step": step, "loss": float(loss.detach())}
        if val is not None and (step % config.validate_every == 0 or step == config.steps):
            entry["val_pcc"] = _validate(module, val, device, model)
            logger.info(
                "step %d: loss %.4f, validation Pearson r %.3f",
                step,
                entry["loss"],
                entry["val_pcc"],
            )
        history.append(entry)
        if progress is not None:
            progress(ProgressEvent("train", step, config.steps, entry))
        if step % config.checkpoint_every == 0 or step == config.steps:
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            model = _checkpoint(model, module, optimizer, sampler, out, step, history, record)
    if start >= config.steps:
        logger.info("%s already trained for %d steps; nothing to do", out, start)
        model = load_model(out)
    return TrainResult(model, out, history)


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that training would replace or cannot write, before any work."""
    if out.exists() and not out.is_dir():
        raise ParameterError(
            f"{out} is a file; choose a new folder for the model package "
            f"({option('out=', '--out')})"
        )
    if not out.exists() or resume:
        return
    if not is_package(out):
        raise ParameterError(
            f"{out} exists and is not a model package; choose a new folder for the model "
            f"({option('out=', '--out')})"
        )
    if not overwrite:
        raise ParameterError(
            f"{out} already holds a trained model; choose another {option('out=', '--out')}, "
            f"continue its run with {option('resume=True', '--resume')}, or replace it with "
            + option("overwrite=True", "--overwrite")
        )


def _forward(spec: Architecture, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The architecture's forward on a batch of patches (their positions are not tracked)."""
    return spec.run(module, x, BlockContext.whole(x))


def _validate(
    module: torch.nn.Module, val: tuple[np.ndarray, np.ndarray], device, model: Model
) -> float:
    module.eval()
    with torch.inference_mode():
        x = torch.from_numpy(val[0]).to(device)
        pred = _forward(model.spec, module, x).float().cpu().numpy()
    values = [i for i, h in enumerate(model.outputs) if h.kind == "value"]  # one per target
    # the mean over target channels of each channel's Pearson r (not one r over all of them)
    return float(np.mean([pearson(val[1][:, c], pred[:, i]) for c, i in enumerate(values)]))


def _provenance(stores, config, patch, scenes, train_regions, val_regions) -> dict[str, Any]:
    return {
        "stores": [store_location(s) for s in stores],
        "config": {**dataclasses.asdict(config), "patch": list(patch)},
        "train_regions": [_region_name(r) for r in train_regions],
        "val_regions": [_region_name(r) for r in val_regions],
        "optimizer": "Adam",
        "loss": "MSE",
    }


def _region_name(region) -> str:
    if region.x == slice(None):
        return region.scene
    return f"{region.scene}[x={region.x.start}:{region.x.stop}]"


def _checkpoint(model, module, optimizer, sampler, out, step, history, record) -> Model:
    module_cpu = copy.deepcopy(module).to("cpu").eval()
    snapshot = dataclasses.replace(
        model,
        module=module_cpu,
        content_hash=state_dict_hash(module_cpu, model.architecture, model.kwargs),
    )
    last = {k: v for k, v in history[-1].items() if k != "step"}
    vals = [h["val_pcc"] for h in history if "val_pcc" in h]
    training = {**record, "steps": step, "last": last, **({"val_pcc": vals[-1]} if vals else {})}
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": sampler.rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    save_model(snapshot, out, training=training, overwrite=True, state=(STATE, state))
    return snapshot


def _restore(out: Path, model: Model, optimizer, sampler) -> tuple[int, list]:
    if not (out / STATE).is_file():
        raise ParameterError(f"nothing to resume in {out} (no {STATE}); drop --resume")
    saved = load_model(out)
    if (saved.kwargs, saved.input_labels, saved.output_labels) != (
        model.kwargs,
        model.input_labels,
        model.output_labels,
    ):
        raise ParameterError(
            f"{out} holds a different model ({saved.kwargs}, {list(saved.input_labels)} → "
            f"{list(saved.output_labels)}); resume with the same settings, or choose a new --out"
        )
    model.module.load_state_dict(saved.module.state_dict())
    # on the CPU: set_rng_state takes a CPU tensor only, and the optimizer moves its own state
    # to the parameters' device when it loads it
    state = torch.load(out / STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    sampler.rng.bit_generator.state = state["rng"]
    torch.set_rng_state(state["torch_rng"])
    logger.info("resuming %s at step %d", out, state["step"])
    return int(state["step"]), list(state["history"])
