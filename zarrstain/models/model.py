"""The Model type: a torch module plus what the engine needs to tile, normalize and label it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from zarrstain.models.architecture import Architecture, BlockContext, channel_labels
from zarrstain.models.registry import get_architecture

if TYPE_CHECKING:
    from zarrstain.models.architecture import Geometry, Head
    from zarrstain.models.heads import OutputHead

__all__ = ["Model", "plain_options", "run_token", "state_dict_hash"]


def plain_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Run options as JSON values: a model among them (a guidance classifier) by name and hash."""

    def plain(value: Any) -> Any:
        if isinstance(value, Model):
            out = {"name": value.name, "content_hash": value.content_hash}
            return {**out, "options": plain(dict(value.options))} if value.options else out
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dict(options))


def run_token(options: Mapping[str, Any]) -> str:
    """A stable token of run options (see :func:`plain_options`)."""
    return hashlib.sha256(json.dumps(plain_options(options), sort_keys=True).encode()).hexdigest()


def state_dict_hash(module: nn.Module, architecture: str, kwargs: dict[str, Any]) -> str:
    """SHA-256 of the architecture, its arguments and every tensor of the state dict, in order."""
    h = hashlib.sha256(json.dumps([architecture, kwargs], sort_keys=True).encode())
    for key, tensor in module.state_dict().items():
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded virtual-staining model.

    Attributes
    ----------
    name
        Human-readable name (for provenance and messages).
    module
        The torch module, in eval mode, on the CPU.
    spatial_dims
        2 (runs plane by plane on (y, x)) or 3 (runs on (z, y, x)).
    input_labels
        Channel labels the model reads, in order; empty when the checkpoint does not say
        (pytorch_fnet): the caller then names the input channels.
    output_labels
        Labels of the channels it predicts.
    divisor
        Every spatial input size must be a multiple of this (``2**depth`` for U-Nets).
    receptive_radius
        Per spatial axis, the largest input offset that can influence an output voxel.
    normalization
        How inputs are normalized before the forward pass (``"center"``, ``"zscore"``,
        ``"percentile"`` or ``"none"``).
    architecture, kwargs
        Registry name and constructor arguments of the module.
    content_hash
        SHA-256 of architecture, arguments and weights: identifies the model in caches and
        provenance.
    output_intensity
        Per output channel, ``(offset, scale)`` of the target channel the model was trained on:
        ``prediction * scale + offset`` is in the target's units. Empty when unknown
        (pytorch_fnet checkpoints): predictions then stay in normalized units.
    source
        Where it was loaded from.
    normalization_args
        Parameters of :attr:`normalization` other than the defaults (``p_low``, ``p_high``,
        ``clip`` of ``"percentile"``: a bioimage.io ``scale_range``); empty for most models.
    source_card
        The ``card`` given to :func:`~zarrstain.load_model` with ``source`` (a dict or a
        path; files that need one: TorchScript, VisCy), so other processes (dask workers)
        reload the same model; None when the file carries its own.
    options
        Run options of this prediction (:meth:`with_options`: a sampler's steps, samples,
        class ...), checked and complete; empty for models that take none. Not part of the
        model package.
    """

    name: str
    module: nn.Module
    spatial_dims: int
    input_labels: tuple[str, ...]
    output_labels: tuple[str, ...]
    divisor: int
    receptive_radius: tuple[int, ...]
    normalization: str
    architecture: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    source: str = ""
    source_card: dict[str, Any] | str | None = None
    normalization_args: Mapping[str, Any] = field(default_factory=dict)
    output_intensity: tuple[tuple[float, float], ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        """What the architecture's methods get: the kwargs, plus ``"options"`` when set."""
        return {**self.kwargs, "options": dict(self.options)} if self.options else self.kwargs

    @property
    def run_options(self) -> dict[str, Any]:
        """The options a run uses: :attr:`options`, or the architecture's defaults."""
        return dict(self.options) if self.options else self.spec.configure(self.kwargs, {})

    def with_options(self, **options: Any) -> Model:
        """This model with run options set (None values: the model's defaults).

        The architecture checks them (:meth:`~zarrstain.models.Architecture.configure`);
        options that change the channels written (a sampler's ``samples``) relabel the
        outputs: each target's value label plus the new heads' suffixes.

        Raises
        ------
        ParameterError
            An option the architecture does not take, or a bad value.
        """
        configured = self.spec.configure(self.kwargs, {**self.options, **options})
        model = dataclasses.replace(self, options=configured)
        return model.relabeled(self.targets, self.target_intensity)

    @property
    def targets(self) -> tuple[str, ...]:
        """Each target's label: the label of its first channel, the value (heads' suffix none)."""
        return self.output_labels[:: len(self.spec.heads(self.config))]

    @property
    def target_intensity(self) -> tuple[tuple[float, float], ...]:
        """Each target's ``(offset, scale)`` (see :attr:`output_intensity`); empty if unknown."""
        return self.output_intensity[:: len(self.spec.heads(self.config))]

    def relabeled(
        self,
        targets: Sequence[str],
        intensity: Sequence[tuple[float, float]] | None = None,
    ) -> Model:
        """This model writing ``targets``, each followed by its heads' channels.

        Labels follow :func:`~zarrstain.models.architecture.channel_labels`. ``intensity``: each
        target's ``(offset, scale)``, repeated over its channels (default: this model's, for a
        model whose heads did not change).
        """
        heads = self.spec.heads(self.config)
        per_target = self.target_intensity if intensity is None else intensity
        return dataclasses.replace(
            self,
            output_labels=channel_labels(targets, heads),
            output_intensity=tuple(v for v in per_target for _ in heads),
        )

    @property
    def in_channels(self) -> int:
        """Number of input channels the module reads."""
        return int(self.kwargs.get("in_channels", len(self.input_labels) or 1))

    @property
    def spec(self) -> Architecture:
        """The registered architecture (:mod:`zarrstain.models.architecture`) of the module."""
        return get_architecture(self.architecture)

    @property
    def geometry(self) -> Geometry:
        """The architecture's geometry for this model's arguments (passes, locality)."""
        return self.spec.geometry(self.config)

    @property
    def head(self) -> OutputHead:
        """The output head: raw module output → the channels written (value, bins, quantiles)."""
        return self.spec.output_head(self.config)

    @property
    def outputs(self) -> tuple[Head, ...]:
        """Per output channel, the head that predicts it (its kind and default dtype).

        Channels are target-major: for heads (value, std) and two targets the channels are
        value₁, std₁, value₂, std₂.
        """
        heads = self.spec.heads(self.config)
        n = len(self.output_labels)
        if n % len(heads):
            raise ValueError(
                f"model {self.name} has {n} output labels, not a multiple of its "
                f"{len(heads)} heads per target ({', '.join(h.kind for h in heads)})"
            )
        return heads * (n // len(heads))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The model's prediction for an (N, C, *spatial) tensor: every pass, as tiling runs it.

        Each item is its own volume (origin 0) in the block context the architecture gets; the
        original module is used (prediction over a store uses the architecture's
        ``inference_module``, equal to float32 rounding).
        """

        for step in range(self.geometry.passes):
            context = BlockContext.whole(x, seed, step, self.run_options)
            x = self.spec.run(self.module, x, context)
        return self.head.reduce(x)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for provenance and ``--dry-run``."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "kwargs": self.kwargs,
            "content_hash": self.content_hash,
            "spatial_dims": self.spatial_dims,
            "input_labels": list(self.input_labels),
            "output_labels": list(self.output_labels),
            "divisor": self.divisor,
            "receptive_radius": list(self.receptive_radius),
            # every layer local: exact tiling reproduces the whole-field result
            "local": self.geometry.local,
            "normalization": self.normalization,
            **(
                {"normalization_args": dict(self.normalization_args)}
                if self.normalization_args
                else {}
            ),
            "output_intensity": [list(v) for v in self.output_intensity],
            "source": self.source,
            **({"options": plain_options(self.options)} if self.options else {}),
        }


def create_model(
    architecture: str,
    *,
    input_labels: Sequence[str],
    output_labels: Sequence[str],
    normalization: str = "center",
    name: str | None = None,
    output_intensity: Sequence[tuple[float, float]] = (),
    **kwargs: Any,
) -> Model:
    """A new (untrained) model of a registered architecture.

    Parameters
    ----------
    architecture
        Registry name, e.g. ``"fnet"``.
    input_labels, output_labels
        Channel labels the model reads and predicts.
    normalization
        Input normalization ``predict`` applies (``"center"``, ``"zscore"``, ``"percentile"``,
        ``"none"``).
    name
        For provenance; default the architecture name.
    output_intensity
        ``(offset, scale)`` per output mapping predictions to the target's units.
    **kwargs
        The architecture's arguments (fnet: ``ndim``, ``depth``, ``mult_chan``); the
        architecture fills in channel counts from the labels
        (:meth:`~zarrstain.models.Architecture.channels`).
    """
    spec = get_architecture(architecture)
    kwargs = spec.channels(kwargs, len(input_labels), len(output_labels))
    module = spec.make_module(kwargs).eval()
    geo = spec.geometry(kwargs)
    model = Model(
        name=name or architecture,
        module=module,
        spatial_dims=geo.spatial_dims,
        input_labels=tuple(input_labels),
        output_labels=tuple(output_labels),
        divisor=geo.divisor,
        receptive_radius=geo.receptive_radius,
        normalization=normalization,
        architecture=architecture,
        kwargs=dict(kwargs),
        content_hash=state_dict_hash(module, architecture, kwargs),
        output_intensity=tuple((float(o), float(s)) for o, s in output_intensity),
    )
    model.outputs  # noqa: B018 - labels must match the heads; fail at creation, not at predict
    return model
