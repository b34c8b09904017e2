"""Training settings: :class:`TrainConfig`, read from TOML and flags, checked before any work."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zarrstain.engine.normalize import METHODS
from zarrstain.errors import ParameterError, option
from zarrstain.models.architecture import Architecture, Geometry
from zarrstain.models.heads import OutputHead, make_head
from zarrstain.models.registry import ARCHITECTURES, aliases, resolve
from zarrstain.models.schema import FAMILY_OPTIONS, Option, check_options, declared
from zarrstain.training.adversarial import (
    GanSettings,
    check_generator,
)
from zarrstain.training.augment import Augmentation
from zarrstain.training.experiment import read_experiment
from zarrstain.training.gan_options import PAPER_RECIPE as PIX2PIX_RECIPE
from zarrstain.training.recipe import check_recipe
from zarrstain.training.selection import MONITORS

__all__ = ["FREEZE", "TrainConfig", "build_config", "training_models"]

#: what ``freeze`` keeps training: the input projection, the output layer, or everything
FREEZE = ("none", "all-but-projection", "all-but-head")


def training_models() -> list[str]:
    """Names ``TrainConfig.model`` accepts: the aliases (``fnet3d``, ...), every trainable
    architecture, and pix2pix."""
    return [
        *aliases(),
        *(n for n, a in ARCHITECTURES.items() if a.trains),
        *ADVERSARIAL,
    ]


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
    # instead of steps: epochs of ceil(training scenes × patches_per_scene / batch_size) steps
    epochs: int | None = None
    patches_per_scene: int = 1  # an epoch's patches per scene (MMV_Im2Im's crops: 4)
    batch_size: int = 4
    # default 32×64×64 (3D) or 256×256 (2D), cut to fit; text "32x64x64" (a flag, a file) too
    patch: list[int] | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    # the recipe (zarrstain.training.recipe): optimizer, weight decay, schedule, clipping
    optimizer: str = "adam"  # or "adamw", "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD's
    schedule: str = "constant"  # or "step", "exponential", "cosine"
    warmup_steps: int = 0  # linear warm-up before the schedule
    # "step" / "exponential": × lr_gamma per this many steps, or per "epoch"
    decay_every: int | str = 1000
    lr_gamma: float = 0.1
    min_lr: float = 0.0  # "cosine": where it ends
    clip_grad_norm: float | None = None  # bound on the gradients' global L2 norm
    precision: str = "float32"  # or mixed: "bfloat16", "float16" (with a gradient scaler)
    seed: int = 0
    normalization: str = "center"
    # "flips" (pytorch_fnet's), "none", or transforms in physical units
    # (zarrstain.training.augment): {"noise": {"std": 0.5}, "affine": {"rotate": 180}, ...}
    augment: Any = "flips"
    # patch sampling in DataLoader worker processes (0: in the training process), each this
    # many batches ahead; the batches do not depend on it (zarrstain.training.loader)
    loader_workers: int = 0
    prefetch: int = 2
    scenes: list[str] | None = None
    val_scenes: list[str] | None = None
    val_fraction: float | None = None
    val_patches: int = 16
    validate_every: int = 50
    # choosing the model (zarrstain.training.selection): the package holds the best
    # validation's weights by this metric ("val_pcc" or "val_loss"); stop after `patience`
    # validations without an improvement above min_delta
    monitor: str | None = None
    patience: int | None = None
    min_delta: float = 0.0
    checkpoint_every: int = 100
    device: str = "auto"
    # the output head (zarrstain.models.heads): "value", "bins" or "quantiles"
    head: str = "value"
    bins: int = 256  # bins head: intensity bins per target (In silico labeling: 256)
    bins_range: list[float] | None = None  # bins head: normalized range; None: from the data
    head_outputs: list[str] | None = None  # bins head: also "mode" / "median" channels
    alpha: float = 0.1  # quantiles head: bounds at alpha/2 and 1 - alpha/2
    # transfer: start from a trained model's weights, training only some of them
    init: str | None = None
    freeze: str = "none"  # "all-but-projection", "all-but-head" or "none"
    # class-conditional models (diffusion): each scene's class from a table, an attribute
    # of the field's or well's group, or one label; label dropout to a null class
    classes: str | None = None
    class_key: str | None = None
    class_dropout: float = 0.0  # > 0: a null class, for classifier-free guidance
    ema: float | None = None  # decay of the weights' moving average; None: the model's default
    published: bool = False  # set by paper(): the architecture's published settings
    # a diffusion backbone: models the targets alone (no input channels), for control branches
    unconditional: bool = False
    # a control branch (--model control): the backbone package, referenced or embedded
    backbone: str | None = None
    embed_backbone: bool = False
    # pix2pix (--model pix2pix): the generator's model, and the critic beside it
    # (zarrstain.training.adversarial; MMV_Im2Im's label-free defaults)
    generator: str | None = None  # default fnet3d
    gan_loss: str | None = None  # "bce" (pix2pix's default) or "lsgan" (CycleGAN's)
    gan_weight: float = 1.0
    reconstruction_loss: str = "mse"  # or "l1"
    reconstruction_weight: float = 1000.0
    discriminator_layers: int = 4
    discriminator_width: int = 64
    discriminator_lr: float = 2e-4
    discriminator_betas: tuple[float, float] = (0.5, 0.999)
    # CycleGAN (--model cyclegan): unpaired; inputs from the scenes outside target_scenes,
    # targets from target_scenes (zarrstain.training.cyclegan: MMV_Im2Im's weights)
    target_scenes: list[str] | None = None
    cycle_weight: float = 10.0
    identity_weight: float = 2.0
    pool_size: int = 50

    def __post_init__(self) -> None:
        if isinstance(self.patch, str):
            self.patch = size_from_text(self.patch, "patch")

    @classmethod
    def paper(cls, **kwargs: Any) -> TrainConfig:
        """The published training recipe of the model's family and its published network
        (``published``): the family's :attr:`~zarrstain.models.Architecture.paper_recipe`
        (pytorch_fnet's: 32 channels, batch 24, 50,000 steps, β1 0.5; guided-I2I's for
        diffusion), or MMV_Im2Im's for pix2pix
        (:data:`zarrstain.training.gan_options.PAPER_RECIPE`). ``kwargs`` override it."""
        model = str(kwargs.get("model") or cls.model)
        if model == PIX2PIX:
            recipe = dict(PIX2PIX_RECIPE)
            generator = str(kwargs.get("generator") or recipe["generator"])
            name, fixed = resolve(generator)
            if name != "fnet":  # another family's network: MMV_Im2Im's optimisation only
                recipe = {k: v for k, v in recipe.items() if k not in ("depth", "mult_chan")}
            if name != "fnet" or fixed.get("ndim", 3) != 3:  # its 32×256×256 crops are 3D
                del recipe["patch"]
            recipe["generator"] = generator
        else:
            name = resolve(model)[0]
            recipe = dict(ARCHITECTURES[name].paper_recipe) if name in ARCHITECTURES else {}
        return cls(**{**recipe, "published": True, **kwargs})

    def architecture(self) -> tuple[Architecture, dict[str, Any]]:
        """The registered architecture ``model`` names, and the module arguments it implies."""
        model = self.model
        if model in ADVERSARIAL:  # adversarial training of a generator: the package holds it
            model = self.generator or "fnet3d"
        name, fixed = resolve(model)
        if name not in ARCHITECTURES or not ARCHITECTURES[name].trains or model in ADVERSARIAL:
            if self.model in ADVERSARIAL:
                generators = [m for m in training_models() if m not in ADVERSARIAL]
                raise ParameterError(
                    f"{self.model}'s generator {model!r} is not a registered architecture; choose "
                    f"one of {', '.join(generators)} ({option('generator=', '--generator')})"
                )
            raise ParameterError(
                f"model {self.model!r} is not a registered architecture; choose one of "
                f"{', '.join(training_models())} ({option('model=', '--model')})"
            )
        spec = ARCHITECTURES[name]
        return spec, {**spec.train_kwargs(self), **fixed}

    @property
    def gan(self) -> Any:
        """The pix2pix or CycleGAN settings
        (:class:`~zarrstain.training.adversarial.GanSettings`), or None."""
        if self.model not in ADVERSARIAL:
            return None
        return GanSettings(
            loss=self.gan_loss or ("lsgan" if self.model == CYCLEGAN else "bce"),
            weight=self.gan_weight,
            reconstruction=self.reconstruction_loss,
            reconstruction_weight=self.reconstruction_weight,
            layers=self.discriminator_layers,
            width=self.discriminator_width,
            lr=self.discriminator_lr,
            betas=tuple(self.discriminator_betas),
            weight_decay=self.weight_decay,
        )

    def output_head(self, bins_range: tuple[float, float] | None = None) -> OutputHead:
        """The output head these settings describe (``bins_range`` for a bins head's default)."""
        if self.head == "bins":
            rng = self.bins_range or bins_range or (-4.0, 4.0)
            extras = tuple(self.head_outputs or ())
            return make_head("bins", bins=self.bins, range=tuple(rng), extras=extras)
        if self.head == "quantiles":
            return make_head("quantiles", alpha=self.alpha)
        return make_head(self.head)

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
        for name in ("validate_every", "checkpoint_every", "prefetch"):
            _positive_int(name, getattr(self, name))
        workers = self.loader_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ParameterError(
                f"{_flag('loader_workers')} must be a whole number ≥ 0, not {workers!r}"
            )
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
        self._check_head()
        self._check_selection()
        Augmentation.parse(self.augment)  # names an unknown transform, a bad range
        check_recipe(self, _flag)
        if self.freeze not in FREEZE:
            raise ParameterError(
                f"{_flag('freeze')} {self.freeze!r} is not one of {', '.join(FREEZE)}"
            )
        if not 0 <= self.class_dropout < 1:
            raise ParameterError(
                f"{_flag('class_dropout')} must be in [0, 1), not {self.class_dropout!r}"
            )
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ParameterError(f"{_flag('ema')} must be in [0, 1), not {self.ema!r}")
        self._check_family_settings()
        self._check_gan()
        if self.freeze != "none" and not self.init:
            raise ParameterError(
                f"{_flag('freeze')} {self.freeze} needs a trained model to start from "
                f"({option('init=', '--init')} MODEL)"
            )

    def _check_family_settings(self) -> None:
        """Settings a family declares (its train schema) are checked by it, and refused when
        another family is trained: e.g. pix2pix's critic for fnet, a class map for a model
        that takes no classes."""
        schema = family_schema(self.model)
        own = {o.name: o for o in (schema[0] if schema else ())}
        owners = _setting_owners()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name not in owners or value == f.default:
                continue
            if f.name in own:  # as the schema reads it: "0.5,0.999" from a file is a pair too
                setattr(self, f.name, own[f.name].convert(value))
                continue
            families, spec = owners[f.name]
            raise ParameterError(
                f"{option(f.name, spec.cli_flag)} is a {' / '.join(families)} setting, not one "
                f"of {self.model!r}; train with {option('model=', '--model')} "
                f"{' or '.join(families)}, or drop it"
            )

    def _check_gan(self) -> None:
        """What pix2pix's schema cannot say: a critic's lr above 0, a generator it can train."""
        if self.target_scenes and self.model != CYCLEGAN:
            raise ParameterError(
                f"{_flag('target_scenes')} chooses an unpaired run's target scenes; train with "
                f"{option('model=', '--model')} cyclegan, or drop it"
            )
        if self.model not in ADVERSARIAL:
            return
        if self.model == CYCLEGAN and not self.target_scenes:
            raise ParameterError(
                "cyclegan learns from unpaired scenes: name those whose targets it learns with "
                f"{option('target_scenes=', '--target-scene')} (the others give the inputs)"
            )
        if not isinstance(self.discriminator_lr, int | float) or not self.discriminator_lr > 0:
            raise ParameterError(
                f"{_flag('discriminator_lr')} must be a positive number, not "
                f"{self.discriminator_lr!r}"
            )
        spec, kwargs = self.architecture()
        check_generator(spec, kwargs, self.generator or "fnet3d")
        if self.precision == "float16":  # two optimizers, one scaler: not supported
            raise ParameterError(
                f"{self.model} trains in float32 or bfloat16, not float16; use "
                f"{_flag('precision')} bfloat16"
            )

    def _check_selection(self) -> None:
        """The metric that chooses the model, and early stopping's patience."""
        if self.monitor is not None and self.monitor not in MONITORS:
            raise ParameterError(
                f"{_flag('monitor')} {self.monitor!r} is not one of {', '.join(MONITORS)}"
            )
        if self.patience is not None:
            _positive_int("patience", self.patience)
            if self.monitor is None:
                raise ParameterError(
                    f"{_flag('patience')} stops when a validation metric stops improving; "
                    f"name it with {_flag('monitor')} val_pcc (or val_loss)"
                )
        delta = self.min_delta
        if isinstance(delta, bool) or not isinstance(delta, int | float) or delta < 0:
            raise ParameterError(f"{_flag('min_delta')} must be a number ≥ 0, not {delta!r}")

    def _check_head(self) -> None:
        if self.head != "bins" and (self.bins_range or self.head_outputs):
            raise ParameterError(
                f"bins_range and head_outputs are options of the bins head, not {self.head!r} "
                f"({option('head=', '--head')} bins)"
            )
        if self.bins_range is not None and len(self.bins_range) != 2:
            raise ParameterError(
                f"bins_range {list(self.bins_range)} must be two numbers, low and high"
            )
        self.output_head()  # unknown heads, bins < 2, alpha outside (0, 1), bad extras

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


#: ``TrainConfig.model`` of adversarial training (the generator is ``TrainConfig.generator``)
PIX2PIX = "pix2pix"
CYCLEGAN = "cyclegan"
ADVERSARIAL = (PIX2PIX, CYCLEGAN)


def _setting_owners() -> dict[str, tuple[list[str], Option]]:
    """Training setting → (the installed families that declare it, its option)."""
    owners: dict[str, tuple[list[str], Option]] = {}
    for family in sorted(FAMILY_OPTIONS):  # messages in one order, however they loaded
        for spec in declared(family).train:
            owners.setdefault(spec.name, ([], spec))[0].append(family)
    return owners


def size_from_text(text: str, name: str) -> list[int]:
    """``"32x64x64"`` (or ``"32,64,64"``) → ``[32, 64, 64]``.

    Raises
    ------
    ParameterError
        Text that is not whole numbers joined by ``x`` or ``,``.
    """
    try:
        return [int(v) for v in text.lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"{_flag(name)} {text!r} is not a size like 32x64x64") from None


def _flag(name: str) -> str:
    return option(name, "--" + name.replace("_", "-"))


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{_flag(name)} must be a whole number ≥ 1, not {value!r}")


def family_schema(model: str) -> tuple[tuple[Option, ...], str] | None:
    """The training settings ``model``'s family declares, and who that is (for messages);
    None for a model no architecture is registered for (``TrainConfig`` names what exists)."""
    name = resolve(model)[0]
    if model in ADVERSARIAL:
        return declared(model).train, f"{model} training"
    if name in ARCHITECTURES:
        return ARCHITECTURES[name].train_schema, f"architecture {name!r}"
    return None


def family_settings(model: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against the training settings of ``model``'s family (pix2pix: its
    own and its generator's are refused alike when not declared).

    Raises
    ------
    ParameterError
        A setting the family does not declare (the message lists those it does), a bad value.
    """
    schema = family_schema(model)
    if schema is None:
        return dict(options)
    return check_options(schema[0], options, owner=schema[1])


def build_config(
    file: str | os.PathLike | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    paper: bool = False,
    options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> TrainConfig:
    """A :class:`TrainConfig` from an experiment file, ``paper`` defaults and keyword overrides.

    The file is YAML or TOML, flat or in sections (:mod:`zarrstain.training.experiment`; its
    stores are :func:`~zarrstain.training.experiment.read_experiment`'s); ``settings``: a file's
    settings read already (``read_experiment(file)[1]``), instead of ``file``. ``options`` are the
    model family's own training settings, checked against its
    :attr:`~zarrstain.models.Architecture.train_schema` (what ``zarrstain train`` makes flags
    of). Unknown keys and missing inputs/targets raise :class:`~zarrstain.errors.ParameterError`.
    """
    if file is not None and settings is not None:
        raise ParameterError("give an experiment file or its settings, not both")
    values: dict[str, Any] = dict(read_experiment(file)[1] if file is not None else settings or {})
    values.update({k: v for k, v in overrides.items() if v not in (None, [], ())})
    if options:
        values.update(family_settings(str(values.get("model") or "fnet3d"), options))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ParameterError(f"unknown training setting {unknown[0]!r}; known: {sorted(known)}")
    name = resolve(str(values.get("model", "")))[0]
    reads_targets = name in ARCHITECTURES and ARCHITECTURES[name].conditional == "required"
    if not values.get("inputs") and (reads_targets or values.get("unconditional")):
        # a classifier reads the target channels; a backbone reads none (the sampler still
        # cuts its patches from the targets)
        values["inputs"] = values.get("targets")
    for key in ("inputs", "targets"):
        if not values.get(key):
            flag = "--input" if key == "inputs" else "--target"
            raise ParameterError(f"no {key} given; name the channels with {flag} LABEL")
        if isinstance(values[key], str):
            values[key] = [values[key]]
    for key in ("betas", "discriminator_betas"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    if "bins_range" in values:
        values["bins_range"] = list(values["bins_range"])
    config = TrainConfig.paper(**values) if paper else TrainConfig(**values)
    config.check()
    return config
