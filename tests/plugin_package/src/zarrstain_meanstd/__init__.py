"""A plug-in model family: a local 2D convolution predicting a value and its std per target.

Three entry points (see ``pyproject.toml``): the architecture ``mean-std`` (trained with
``zarrstain train --model mean-std``, predicted with ``zarrstain predict``); its run option
``std_scale`` (``options.py``: ``zarrstain predict --std-scale 2``); and the format
``mean-std-json``: a JSON file of weights (``*.meanstd.json``) that ``zarrstain.load_model``
opens like any model file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zarrstain.models import Architecture, Geometry, Head, ModelFormat, create_model
from zarrstain.models.model import state_dict_hash


class MeanStd(Architecture):
    """3×3 convolutions, 2D: radius 1 per axis, every layer local (exact tiling)."""

    name = "mean-std"
    loss_name = "Gaussian NLL"

    def build(self, in_channels: int = 1, out_channels: int = 2) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        return Geometry(spatial_dims=2, divisor=1, radii=((1, 1),), local=True)

    def heads(self, kwargs: dict[str, Any]) -> tuple[Head, ...]:
        return (Head("value"), Head("std", " std", dtype="float32"))

    def channels(self, kwargs: dict[str, Any], n_inputs: int, n_outputs: int) -> dict[str, Any]:
        return {"in_channels": n_inputs, "out_channels": n_outputs, **kwargs}

    def configure(self, kwargs: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        # the run options declared in options.py, checked by zarrstain, completed here
        return {"std_scale": float(options.get("std_scale", 1.0))}

    def run(self, module: nn.Module, x: torch.Tensor, context: Any) -> torch.Tensor:
        out = module(x)
        std = nn.functional.softplus(out[:, 1::2]) * context.options.get("std_scale", 1.0)
        return torch.cat([out[:, 0::2], std], 1)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.gaussian_nll_loss(prediction[:, 0::2], target, prediction[:, 1::2])


class JsonWeights(ModelFormat):
    """``{"input": "BF", "target": "DNA", "weight": [[[...]]], "bias": [...]}`` as a model.

    Optional: ``"normalization"`` of the inputs (default ``"center"``) and ``"output_intensity"``,
    ``[[offset, scale], ...]`` per output mapping predictions to the target's units.
    """

    name = "mean-std-json"
    description = "a mean-std weights file (*.meanstd.json)"
    priority = 60

    def guess_can_open(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(".meanstd.json")

    def load(self, path: Path, card: Any = None) -> Any:
        spec = json.loads(path.read_text())
        model = create_model(
            "mean-std",
            input_labels=[spec["input"]],
            output_labels=[f"{spec['target']} (predicted)", f"{spec['target']} (predicted) std"],
            name=path.name,
            normalization=spec.get("normalization", "center"),
            output_intensity=spec.get("output_intensity", ()),
        )
        state = {
            "weight": torch.tensor(spec["weight"], dtype=torch.float32),
            "bias": torch.tensor(spec["bias"], dtype=torch.float32),
        }
        model.module.load_state_dict(state)
        # the fingerprint in every prediction's provenance is of these weights, not the initial
        digest = state_dict_hash(model.module, model.architecture, model.kwargs)
        return dataclasses.replace(model, content_hash=digest, source=str(path))
