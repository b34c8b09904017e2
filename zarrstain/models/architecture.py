"""The architecture protocol: what a model family tells the engine, and how the engine runs it.

One engine tiles, normalizes, denormalizes and writes every model family. A family plugs in by
subclassing :class:`Architecture` and declaring it as an entry point (``zarrstain.architectures``,
see :mod:`zarrstain.models.plugins`) or calling :func:`zarrstain.models.register`; nothing in
``predict``, the tiling layer or the writer knows a family by name. The engine asks an
architecture for

- its **module** (:meth:`Architecture.build`) from the keyword arguments stored in a model card;
- its **geometry** (:meth:`Architecture.geometry`): spatial dims, the divisor every input size
  must be a multiple of, the receptive radius per pass and axis, and whether every layer is
  *local* (convolutions, per-pixel norms, eval-mode batch statistics): only then does tiling
  reproduce the whole-volume result, and non-local models run one whole field per block;
- its **heads** (:meth:`Architecture.heads`): per predicted target, the channels it writes and
  their kind (value, std, lower, upper, width, probability), which decide how each channel is
  mapped back to the target's units and its default dtype; by default those of its **output
  head** (:meth:`Architecture.output_head`, :mod:`zarrstain.models.heads`: a value, In silico
  labeling's intensity bins, or quantiles), which turns the module's raw output into the
  channels written, voxel by voxel inside each block, and supplies the training loss;
- the **memory** of a forward pass per input voxel (:meth:`Architecture.bytes_per_voxel`), which
  sizes blocks;
- how to **run** one block of one pass (:meth:`Architecture.run`), given a
  :class:`BlockContext` with the block's global position, the seed and the pass: so
  position-dependent or seeded models (diffusion samplers) get numbers that depend on global
  coordinates, never on the chunking;
- its **run options**: settings of one prediction that are not part of the trained model (a
  sampler's steps, samples and class), declared as a schema (:attr:`Architecture.run_schema`,
  :mod:`zarrstain.models.schema`: the engine checks names and types, the CLI makes flags),
  completed with defaults (:meth:`Architecture.configure`) and resolved per scene
  (:meth:`Architecture.scene_options`); they may change the passes and the channels written,
  and reach :meth:`Architecture.run` in the block context;
- its **training loss** (:meth:`Architecture.loss`, or a whole :meth:`Architecture.training_step`
  for models that train on something other than a forward of the inputs, such as a denoiser)
  and the keyword arguments a :class:`~zarrstain.training.TrainConfig` implies
  (:meth:`Architecture.train_kwargs`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zarrstain.errors import ParameterError
from zarrstain.models.schema import Option, declared

if TYPE_CHECKING:  # torch is imported by the modules that run models, not by the protocol
    import torch
    from torch import nn

    from zarrstain.models.heads import OutputHead

__all__ = [
    "KINDS",
    "Architecture",
    "BlockContext",
    "Geometry",
    "Head",
    "channel_labels",
    "output_label",
]

#: output kinds → (adds the target's offset, multiplies by the target's scale)
KINDS: dict[str, tuple[bool, bool]] = {
    "value": (True, True),  # an intensity: the target's units
    "lower": (True, True),  # interval bounds and quantiles are intensities too
    "upper": (True, True),
    "quantile": (True, True),
    "std": (False, True),  # a spread: scales with the target, has no offset
    "width": (False, True),
    "probability": (False, False),  # unit-free
}


@dataclass(frozen=True)
class Head:
    """One channel an architecture predicts per target.

    Attributes
    ----------
    kind
        One of :data:`KINDS`: decides the denormalization (values get the target's offset and
        scale, spreads its scale only, probabilities neither).
    suffix
        Appended to the target's output label: ``"DNA (predicted) std"`` for suffix
        ``" std"`` (the value channel has none: ``"DNA (predicted)"``).
    dtype
        Default dtype written for this channel, or None for the run's dtype (spreads and
        probabilities are usually kept float32 even when values are written as integers).
    """

    kind: str = "value"
    suffix: str = ""
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind {self.kind!r} is not one of {', '.join(KINDS)}")

    def label(self, target: str) -> str:
        """The default label of this head's channel for ``target``: ``"DNA (predicted) std"``."""
        return output_label(target) + self.suffix


def output_label(target: str) -> str:
    """The default output label of a target channel: ``"DNA"`` → ``"DNA (predicted)"``."""
    return f"{target} (predicted)"


def channel_labels(bases: Sequence[str], heads: Sequence[Head]) -> tuple[str, ...]:
    """The channels written for targets labeled ``bases``, target-major.

    The one rule for output labels: each target's label followed by its heads' suffixes
    (``"DNA (predicted)"``, ``"DNA (predicted) std"``, ...). Renaming a model's output, changing
    its head or a run option that adds channels all relabel through it.
    """
    return tuple(base + h.suffix for base in bases for h in heads)


@dataclass(frozen=True)
class Geometry:
    """What tiling needs to know about a module.

    Attributes
    ----------
    spatial_dims
        2 (runs plane by plane on (y, x)) or 3 (on (z, y, x)).
    divisor
        Every spatial input size must be a multiple of this (``2**depth`` for U-Nets).
    radii
        Per pass, per spatial axis: the largest input offset that can influence an output
        voxel of that pass. One entry for single-pass models.
    local
        Every layer is local, so tiled prediction with the exact halo equals one whole-volume
        forward. False (global attention, per-image statistics, GroupNorm over the input): one
        whole field per block, and any tiling is approximate.
    minimum
        Per spatial axis, the smallest extent the model reads (a 2.5D network's z window);
        empty: no minimum beyond the divisor.
    """

    spatial_dims: int
    divisor: int
    radii: tuple[tuple[int, ...], ...]
    local: bool = True
    minimum: tuple[int, ...] = ()

    @property
    def receptive_radius(self) -> tuple[int, ...]:
        """Of the whole model: the passes' radii add up."""
        return tuple(sum(axis) for axis in zip(*self.radii, strict=True))

    @property
    def passes(self) -> int:
        """Number of passes (one ``map_overlap`` each)."""
        return len(self.radii)


@dataclass(frozen=True)
class BlockContext:
    """Where a block lies and what run it belongs to, for :meth:`Architecture.run`.

    Attributes
    ----------
    origins
        Per item of the batch, the global (t, z, y, x) index of the item's first voxel inside the
        padded volume (the block's halo included). 3D models get one item per time point, 2D
        models one per (t, z) plane.
    volume
        (t, z, y, x) of the padded volume.
    seed
        The run's seed (``predict(seed=...)``).
    step
        The pass being run (0 for single-pass models).
    device
        Where the batch lives.
    options
        The run options (:meth:`Architecture.configure`), complete with defaults.
    """

    origins: tuple[tuple[int, int, int, int], ...]
    volume: tuple[int, int, int, int]
    seed: int = 0
    step: int = 0
    device: Any = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def whole(
        cls,
        x: torch.Tensor,
        seed: int = 0,
        step: int = 0,
        options: Mapping[str, Any] | None = None,
    ) -> BlockContext:
        """The context of a batch whose items are each a volume of their own (origin 0)."""
        n = x.shape[0]  # not len(x): under torch.jit.trace that warns on every export
        volume = (n, *((1,) * (5 - x.dim())), *x.shape[2:])
        return cls(((0, 0, 0, 0),) * n, volume, seed, step, x.device, dict(options or {}))


class Architecture:
    """Base class of a model family; subclass it and :func:`~zarrstain.models.register` it.

    Subclasses must set :attr:`name` and implement :meth:`build` and :meth:`geometry`; the other
    methods have defaults for a single-pass, single-value, MSE-trained convolutional network.
    """

    #: registry name, stored in model cards
    name: str = ""
    #: predictions depend on the seed (then it enters the provenance fingerprint)
    stochastic: bool = False
    #: names :meth:`loss` in training provenance
    loss_name: str = "MSE"
    #: ``zarrstain train`` can train it (False: models loaded from files only, TorchScript)
    trains: bool = True
    #: decay of the weights' moving average training keeps and saves (0: none)
    default_ema: float = 0.0
    #: class labels: "" (none), "optional" (a class embedding when trained with a class map),
    #: "required" (a classifier of the targets: learns the classes, reads the target channels)
    conditional: str = ""
    #: module arguments :class:`~zarrstain.training.TrainConfig` holds as fields of its own
    #: (fnet's ``depth``, ``mult_chan``, ``projection``): experiment files set them there
    config_fields: tuple[str, ...] = ()
    #: the method paper exported packages cite: (text, DOI or URL); empty: none declared
    citation: tuple[str, str] = ()
    #: the published training recipe, as :class:`~zarrstain.training.TrainConfig` settings
    #: (``--paper``, which also sets ``published`` for :meth:`train_kwargs`' network)
    paper_recipe: Mapping[str, Any] = {}  # read only, never mutated
    #: training names that stand for this architecture with fixed arguments, e.g. fnet's
    #: ``{"fnet3d": {"ndim": 3}}`` (``zarrstain train --model fnet3d``)
    aliases: Mapping[str, Mapping[str, Any]] = {}  # read only, never mutated

    @property
    def run_schema(self) -> tuple[Option, ...]:
        """The run options a prediction may set (:mod:`zarrstain.models.schema`): ``predict
        (options=...)`` refuses others, and the CLI makes a flag of each. Default: those the
        family declares as an entry point of ``zarrstain.options``; a family registered in
        code may set this as a class attribute instead."""
        return declared(self.name).run

    @property
    def train_schema(self) -> tuple[Option, ...]:
        """The training settings of this family beyond :class:`~zarrstain.training.TrainConfig`'s
        common ones; declared like :attr:`run_schema`."""
        return declared(self.name).train

    def build(self, **kwargs: Any) -> nn.Module:
        """The module, constructed from a model card's keyword arguments."""
        raise NotImplementedError

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        """Spatial dims, divisor, receptive radii and locality for these arguments."""
        raise NotImplementedError

    def make_module(self, kwargs: dict[str, Any]) -> nn.Module:
        """:meth:`build` with a card's kwargs, less ``head`` (the engine applies the head)."""
        return self.build(**{k: v for k, v in kwargs.items() if k not in ("head", "options")})

    def configure(self, kwargs: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """The run options of one prediction, checked and completed with defaults.

        Run options are settings that are not part of the trained model (a sampler's steps,
        samples per field, class, guidance). The engine passes them back to the other methods
        under ``kwargs["options"]`` and to :meth:`run` as ``context.options``. Default: a
        model takes none, and any given is refused.

        Raises
        ------
        ParameterError
            An option the model does not take, or a value it cannot use.
        """
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            raise ParameterError(
                f"architecture {self.name!r} takes no run options, so "
                f"{', '.join(sorted(given))} cannot apply"
            )
        return {}

    def scene_options(self, options: Mapping[str, Any], scene: Any) -> dict[str, Any]:
        """The run options of one scene, from those given (checked against :attr:`run_schema`).

        Options declared with ``scene=True`` (a class map) are resolved here for ``scene``, a
        (t, c, z, y, x) DataArray whose attrs carry its name and its groups' attributes.
        Default: the options as given.
        """
        return dict(options)

    def fix_options(
        self, kwargs: dict[str, Any], options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Make run options part of the model (a calibration depends on them).

        Returns the card's kwargs with ``options`` as the model's defaults, and the settings
        that change what it predicts, for the record (None: a model without such settings).
        Default: no run options, so any given is refused.

        Raises
        ------
        ParameterError
            Options this model cannot take.
        """
        self.configure(kwargs, options)  # refuses any option given
        return kwargs, None

    def stored_every(self, config: dict[str, Any]) -> int:
        """Passes chained between two states kept in a scratch store (multi-pass models): more
        passes per state, fewer writes, more recomputed after an interruption. Default 1."""
        return 1

    def output_head(self, kwargs: dict[str, Any]) -> OutputHead:
        """The head between the module's raw output and the channels written.

        Default: the one ``kwargs["head"]`` describes (:mod:`zarrstain.models.heads`), a value
        head when absent. The engine applies its ``reduce`` to the last pass of every block.
        """
        from zarrstain.models.heads import head_from_kwargs  # torch: only once a model runs

        return head_from_kwargs(kwargs)

    def heads(self, kwargs: dict[str, Any]) -> tuple[Head, ...]:
        """The channels written per target, in order (default: the output head's)."""
        return self.output_head(kwargs).outputs

    def channels(self, kwargs: dict[str, Any], n_inputs: int, n_outputs: int) -> dict[str, Any]:
        """``kwargs`` completed with channel counts implied by the labels (default: as given)."""
        return dict(kwargs)

    def bytes_per_voxel(self, kwargs: dict[str, Any]) -> int:
        """Rough peak bytes of a forward pass per input voxel (sizes blocks; default 1 KiB)."""
        return 1024

    def pass_channels(self, kwargs: dict[str, Any], step: int, n_in: int, n_out: int) -> int:
        """Channels pass ``step`` produces (default: the outputs; override for intermediates)."""
        return n_out

    def layer_groups(self, kwargs: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        """Parameter-name prefixes of the ``"projection"`` and ``"head"`` layers (for transfer).

        ``train(init=..., freeze="all-but-head")`` trains only the parameters under the head's
        prefixes; default: none declared.
        """
        return {}

    def trainable(self, module: nn.Module) -> set[str] | None:
        """Names of the parameters training updates (default None: all of them)."""
        return None

    def saved_state(self, module: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The tensors a model package stores (default: the whole state dict)."""
        return module.state_dict()

    def load_state(self, module: nn.Module, state: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """Load a package's stored tensors into a freshly built module (default: strictly)."""
        module.load_state_dict(state, strict=True)

    def inference_module(self, module: nn.Module) -> nn.Module:
        """The module prediction runs (default: the module itself).

        Override to return a leaner equivalent for inference (folded normalization, in-place
        activations); it must compute the same function to float32 rounding.
        """
        return module

    def run(self, module: nn.Module, x: torch.Tensor, context: BlockContext) -> torch.Tensor:
        """One pass over a batch (N, C, *spatial) of one block (default: ``module(x)``)."""
        return module(x)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch (default: mean squared error, pytorch_fnet's).

        Override for a loss of your own; models with an output head other than ``value``
        train with the head's loss instead (:meth:`training_loss`).
        """
        from torch.nn import functional

        return functional.mse_loss(prediction, target)

    def training_loss(
        self,
        kwargs: dict[str, Any],
        raw: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss training minimises, on the last pass's raw output.

        ``mask`` (N, targets) marks the targets each patch has (a scene may lack some: they
        are left out of the loss). The output head's loss, unless the architecture overrides
        :meth:`loss` (then that, which takes no mask).
        """
        head = self._training_head(kwargs)
        if head is not None:
            return head.loss(raw, target, mask)
        if mask is not None and not bool(mask.all()):
            raise ParameterError(
                f"architecture {self.name!r} has its own loss, which cannot leave out targets "
                "a scene lacks; train on scenes that hold every target, or override "
                "training_loss"
            )
        return self.loss(raw, target)

    def training_step(
        self,
        kwargs: dict[str, Any],
        module: nn.Module,
        batch: tuple[torch.Tensor, ...],
    ) -> torch.Tensor:
        """The loss of one training batch ``(inputs, targets, mask[, classes])``.

        Default: :meth:`training_loss` of a forward of the inputs. Override for models that
        train on something else (a denoiser: noisy targets at a random step).
        """
        x, y, mask = batch[:3]
        return self.training_loss(kwargs, self.run(module, x, BlockContext.whole(x)), y, mask)

    def validation_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Run options validation during training predicts with (default: none)."""
        return {}

    def loss_label(self, kwargs: dict[str, Any]) -> str:
        """Names the training loss in provenance."""
        head = self._training_head(kwargs)
        return head.loss_name if head is not None else self.loss_name

    def _training_head(self, kwargs: dict[str, Any]) -> OutputHead | None:
        """The head whose loss training uses, or None when the architecture's own applies."""
        head = self.output_head(kwargs)
        if head.kind != "value" or type(self).loss is Architecture.loss:
            return head
        return None

    def train_kwargs(self, config: Any) -> dict[str, Any]:
        """Module arguments for a training config (default: ``config.model_kwargs``)."""
        return dict(getattr(config, "model_kwargs", None) or {})

    def __repr__(self) -> str:
        return f"<architecture {self.name!r} ({type(self).__module__}.{type(self).__name__})>"
