"""Experiment files: a whole training run described in YAML or TOML (MMV_Im2Im's habit).

Two layouts are read. *Flat*: :class:`~zarrstain.training.TrainConfig`'s keys at the top level
(what ``--config`` has always read). *Sectioned*, as MMV_Im2Im describes an experiment:

.. code-block:: yaml

    data:                       # where the pairs come from
      stores: [plate.zarr]
      inputs: [BF]
      targets: [DNA]
      scenes: [A/1/0, A/2/0]    # optional, as val_scenes, val_fraction, patch, normalization
      augment: {noise: {std: 0.5}, blur: {sigma_um: [0.1, 0.6]}}   # optional; default flips
    model:                      # what learns
      architecture: fnet2d
      kwargs: {depth: 4, mult_chan: 32}
      head: value               # optional, as bins, alpha, init, freeze, backbone, ...
    training:                   # how
      loss: auto                # the model's own (MSE, pinball, cross-entropy, diffusion)
                                # or pix2pix's: {name: pix2pix, gan: bce, gan_weight: 1,
                                #   reconstruction: mse, reconstruction_weight: 1000}
      optimizer: {name: adam, lr: 0.001, betas: [0.9, 0.999]}   # adamw, sgd; weight_decay
      schedule: {name: constant}   # step, exponential (decay_every: steps or "epoch",
                                   # gamma), cosine (min_lr); each: warmup_steps
      clip_grad_norm: 1.0          # optional
      steps: 5000               # or epochs: (data.patches_per_scene patches per scene)
      batch_size: 24
      monitor: val_pcc          # optional: keep the best validation's weights (or val_loss)
      patience: 5               # optional: stop after 5 validations without improvement

All three sections are required; every key is checked, and a bad one is named with the keys
(or values) allowed. Relative paths (stores, ``model.backbone``, ``model.init``) are read
from the file's folder. The file's suffix chooses the parser (``.yaml``/``.yml`` or ``.toml``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from zarrstain.errors import ParameterError
from zarrstain.models.registry import ARCHITECTURES, resolve

__all__ = ["SECTIONS", "read_experiment"]

#: per section, its keys → the TrainConfig field each fills (None: handled apart)
SECTIONS: dict[str, dict[str, str | None]] = {
    "data": {"stores": None, "inputs": "inputs", "targets": "targets", "scenes": "scenes",
             "val_scenes": "val_scenes", "val_fraction": "val_fraction", "patch": "patch",
             "normalization": "normalization", "classes": "classes",
             "class_key": "class_key", "val_patches": "val_patches",
             "patches_per_scene": "patches_per_scene", "augment": "augment",
             "loader_workers": "loader_workers", "prefetch": "prefetch"},
    "model": {"architecture": "model", "kwargs": None, "head": "head", "bins": "bins",
              "bins_range": "bins_range", "head_outputs": "head_outputs", "alpha": "alpha",
              "init": "init", "freeze": "freeze", "backbone": "backbone",
              "embed_backbone": "embed_backbone", "unconditional": "unconditional",
              "class_dropout": "class_dropout", "ema": "ema", "generator": "generator",
              "discriminator": None},
    "training": {"loss": None, "optimizer": None, "schedule": None, "steps": "steps",
                 "epochs": "epochs",
                 "discriminator_optimizer": None,
                 "batch_size": "batch_size", "seed": "seed", "device": "device",
                 "validate_every": "validate_every", "checkpoint_every": "checkpoint_every",
                 "monitor": "monitor", "patience": "patience", "min_delta": "min_delta",
                 "clip_grad_norm": "clip_grad_norm", "precision": "precision"},
}  # fmt: skip
#: per optimizer (zarrstain.training.recipe), the keys training.optimizer takes
OPTIMIZERS = {
    "adam": ("lr", "betas", "weight_decay"),
    "adamw": ("lr", "betas", "weight_decay"),
    "sgd": ("lr", "momentum", "weight_decay"),
}
#: per schedule, the keys training.schedule takes → the TrainConfig field each sets
SCHEDULES = {
    "constant": {"warmup_steps": "warmup_steps"},
    "step": {"decay_every": "decay_every", "gamma": "lr_gamma", "warmup_steps": "warmup_steps"},
    "exponential": {"decay_every": "decay_every", "gamma": "lr_gamma",
                    "warmup_steps": "warmup_steps"},
    "cosine": {"warmup_steps": "warmup_steps", "min_lr": "min_lr"},
}  # fmt: skip
LOSSES = ("auto", "pix2pix")
#: pix2pix's training.loss keys and model.discriminator keys → TrainConfig fields
PIX2PIX_LOSS = {"gan": "gan_loss", "gan_weight": "gan_weight",
                "reconstruction": "reconstruction_loss",
                "reconstruction_weight": "reconstruction_weight"}  # fmt: skip
DISCRIMINATOR = {"layers": "discriminator_layers", "width": "discriminator_width"}
#: kwargs of the fnet architectures that are TrainConfig fields of their own


def read_experiment(path: str | os.PathLike) -> tuple[list[str], dict[str, Any]]:
    """The stores and the :class:`~zarrstain.training.TrainConfig` values a file describes.

    Raises
    ------
    ParameterError
        An unreadable file, an unknown section or key, a bad value, or a missing section.
    """
    p = Path(path)
    values = _parse(p)
    if not isinstance(values, dict):
        raise ParameterError(f"{p}: an experiment file is a mapping of settings, not {values!r}")
    if not any(isinstance(values.get(s), dict) for s in SECTIONS):  # flat: TrainConfig's keys
        stores = _strings(p, "stores", values.pop("stores", []))
        return [_relative(p, s) for s in stores], values
    unknown = sorted(set(values) - set(SECTIONS))
    if unknown:
        raise ParameterError(
            f"{p}: unknown section {unknown[0]!r}; an experiment has sections "
            + ", ".join(SECTIONS)
        )
    missing = [s for s in SECTIONS if s not in values]
    if missing:
        raise ParameterError(
            f"{p}: missing section {missing[0]!r}; an experiment has sections "
            + ", ".join(SECTIONS)
        )
    out: dict[str, Any] = {}
    stores: list[str] = []
    for section, keys in SECTIONS.items():
        body = values[section] or {}
        if not isinstance(body, dict):
            raise ParameterError(f"{p}: section {section!r} must hold keys, not {body!r}")
        for key, value in body.items():
            if key not in keys:
                raise ParameterError(
                    f"{p}: unknown key {section}.{key}; allowed: {', '.join(keys)}"
                )
            field = keys[key]
            if field in ("backbone", "init") and isinstance(value, str):
                out[field] = _relative(p, value)
            elif field is not None:
                out[field] = value
            elif key == "stores":  # relative paths: from the file's folder
                stores = [_relative(p, s) for s in _strings(p, "data.stores", value)]
            elif key == "kwargs":
                generator = body.get("generator") or "fnet3d"
                architecture = str(body.get("architecture", ""))
                architecture = generator if architecture == "pix2pix" else architecture
                out.update(_model_kwargs(p, value, str(architecture)))
            elif key == "discriminator":
                out.update(_sub(p, "model.discriminator", value, DISCRIMINATOR))
            else:
                out.update(_training_extra(p, key, value))
    return stores, out


def _relative(p: Path, path: str) -> str:
    """A path of the file read from the file's folder (URLs and absolute paths as they are)."""
    return path if "://" in path or Path(path).is_absolute() else str(p.parent / path)


def _parse(p: Path) -> Any:
    try:
        text = p.read_text()
    except OSError as exc:
        raise ParameterError(f"cannot read the experiment file {p}: {exc}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ParameterError(f"{p} is not valid YAML: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParameterError(f"{p} is not valid TOML: {exc}") from None


def _strings(p: Path, key: str, value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ParameterError(f"{p}: {key} must be a path or a list of paths, not {value!r}")
    return list(items)


def _model_kwargs(p: Path, value: Any, architecture: str) -> dict[str, Any]:
    """``model.kwargs``: those the family takes from TrainConfig's own fields go there
    (:attr:`~zarrstain.models.Architecture.config_fields`: fnet's depth, ...), the rest to
    ``model_kwargs``."""
    if not isinstance(value, dict):
        raise ParameterError(f"{p}: model.kwargs must hold keys, not {value!r}")
    name = resolve(architecture)[0] if architecture else ""
    fields = ARCHITECTURES[name].config_fields if name in ARCHITECTURES else ()
    out = {k: v for k, v in value.items() if k in fields}
    rest = {k: v for k, v in value.items() if k not in fields}
    if rest:
        out["model_kwargs"] = rest
    return out


def _sub(p: Path, key: str, value: Any, fields: dict[str, str]) -> dict[str, Any]:
    """A mapping of settings whose keys ``fields`` names: the TrainConfig fields it sets."""
    if not isinstance(value, dict):
        raise ParameterError(f"{p}: {key} must hold keys ({', '.join(fields)}), not {value!r}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ParameterError(f"{p}: unknown key {key}.{unknown[0]}; allowed: {', '.join(fields)}")
    return {fields[k]: v for k, v in value.items()}


def _training_extra(p: Path, key: str, value: Any) -> dict[str, Any]:
    """training.loss / optimizer / schedule, checked; the TrainConfig fields they set."""
    if key == "loss" and isinstance(value, dict) and value.get("name") == "pix2pix":
        return _sub(p, "training.loss", {k: v for k, v in value.items() if k != "name"},
                    PIX2PIX_LOSS)  # fmt: skip
    if key == "loss":
        if value not in LOSSES:
            raise ParameterError(
                f"{p}: training.loss {value!r} is not one of {', '.join(LOSSES)} (the loss "
                "follows the model: MSE for values, the head's for bins or quantiles, the "
                "objective's for diffusion)"
            )
        return {}
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or "name" not in spec:
        raise ParameterError(f"{p}: training.{key} needs a name, e.g. {{name: ...}}, not {value!r}")
    name = spec["name"]
    if key == "schedule":
        if name not in SCHEDULES:
            raise ParameterError(
                f"{p}: training.schedule.name {name!r} is not one of {', '.join(SCHEDULES)}"
            )
        extra = sorted(set(spec) - {"name", *SCHEDULES[name]})
        if extra:
            raise ParameterError(
                f"{p}: training.schedule.{extra[0]}: the {name} schedule takes "
                + (", ".join(SCHEDULES[name]) or "no options")
            )
        fields = SCHEDULES[name]
        return {"schedule": name, **{fields[k]: v for k, v in spec.items() if k != "name"}}
    allowed = {"adam": OPTIMIZERS["adam"][:2]} if key == "discriminator_optimizer" else OPTIMIZERS
    if name not in allowed:
        raise ParameterError(
            f"{p}: training.{key}.name {name!r} is not one of {', '.join(allowed)}"
        )
    extra = sorted(set(spec) - {"name", *allowed[name]})
    if extra:
        raise ParameterError(
            f"{p}: unknown key training.{key}.{extra[0]}; allowed: name, "
            + ", ".join(allowed[name])
        )
    prefix = "discriminator_" if key == "discriminator_optimizer" else ""
    out = {prefix + k: (tuple(v) if k == "betas" else v) for k, v in spec.items() if k != "name"}
    return out if prefix else {"optimizer": name, **out}
