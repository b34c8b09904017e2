"""VisCy's virtual-staining checkpoints (VSCyto2D, VSCyto3D, VSNeuromast), run as VisCy runs them.

``zarrstain.load_model("VSCyto3D.ckpt")`` reads a Lightning checkpoint of VisCy's ``VSUNet``
(or ``FcmaeUNet``) safely (``weights_only=True``; the one non-tensor type Lightning may store,
its ``AttributeDict``, allow-listed by name), rebuilds the network from the weights' shapes in
plain torch (:mod:`~zarrstain.models.nets.unext2`, :mod:`~zarrstain.models.nets.fcmae`: no timm, no
MONAI) and wraps it in :class:`VisCyPredictor`, which predicts a whole field as VisCy's
``predict`` does:

- **y/x padding**: zeros, split evenly before and after, to a multiple of ``2**num_blocks``
  (64 for UNeXt2, 256 for VSCyto2D's FCMAE), as VisCy's ``DivisiblePad``; cropped after;
- **z windows**: every window of ``in_stack_depth`` planes with step 1; a network predicting
  as many planes as it reads has each output plane averaged over the windows that cover it
  (VisCy's ``HCSPredictionWriter`` blending), one predicting one plane writes the window's
  centre, and the first and last ``depth // 2`` planes stay zero, as in VisCy's output store;
- **normalization**: ``"median_iqr"`` (VisCy's ``NormalizeSampled`` with median and IQR, which
  its published models use; see :mod:`zarrstain.engine.normalize` for how the statistics differ).

VisCy's published models are **not local** (ConvNeXt-V2's GRN and the head's instance norm
see the whole y/x field), so they declare themselves non-local: ``predict`` runs one whole
field per block, the only exact way, and tiling it is approximate and labelled so. VisCy's
older 2D and 2.5D U-Nets (:mod:`~zarrstain.models.nets.viscy_unet`) are local: they tile exactly,
the engine mirroring the volume to their divisor where VisCy pads each field with zeros (the
same prediction whenever y and x are multiples of ``2**num_blocks``).

Checkpoints store no channel names, and some settings have no weights (``head_pool``), so a
**card** completes them: a JSON file, or VisCy's own LightningCLI ``predict`` YAML (its
``model.init_args`` and ``data.init_args`` are read), beside the checkpoint
(``VSCyto3D.ckpt`` → ``VSCyto3D.json`` / ``.yml`` / ``.yaml``) or passed as ``card=``. JSON
keys, all optional::

    {"input_labels": ["Phase3D"], "output_labels": ["Nuclei (predicted)",
     "Membrane (predicted)"], "normalization": "median_iqr", "name": "VSCyto3D",
     "architecture": "UNeXt2", "model_config": {"head_pool": true}}

Without one, inputs are named by the caller (``input_channels`` / ``--input-channel``) and
outputs are labelled ``"<file> <i> (predicted)"``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from zarrstain.errors import ModelError, ParameterError
from zarrstain.models.architecture import Architecture, Geometry
from zarrstain.models.format import FileFormat
from zarrstain.models.model import Model, state_dict_hash
from zarrstain.models.nets.fcmae import FullyConvolutionalMAE, fcmae_config
from zarrstain.models.nets.unext2 import UNeXt2, unext2_config
from zarrstain.models.nets.viscy_unet import Unet2d, Unet25d, unet_config, unet_radius
from zarrstain.models.viscy.card import read_card

__all__ = ["VisCyArchitecture", "VisCyPredictor", "is_viscy_checkpoint", "load_viscy_checkpoint"]

logger = logging.getLogger(__name__)


def _unext2(state: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> dict[str, Any]:
    return {**unext2_config(state), "head_pool": bool(given.get("head_pool", False))}


def _fcmae(state: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> dict[str, Any]:
    return {**fcmae_config(state), "head_conv_pool": bool(given.get("head_conv_pool", True))}


def _unet(network: str) -> Any:
    return lambda state, given: unet_config(state, network, given)


#: VisCy's ``VSUNet`` architecture names → (network, its arguments from a state dict and
#: VisCy's ``model_config``, which alone says what has no weights)
NETWORKS: dict[str, tuple[type[nn.Module], Any]] = {
    "UNeXt2": (UNeXt2, _unext2),
    "fcmae": (FullyConvolutionalMAE, _fcmae),
    "UNeXt2_2D": (FullyConvolutionalMAE, _fcmae),
    "2D": (Unet2d, _unet("2D")),
    "2.5D": (Unet25d, _unet("2.5D")),
}
#: the older U-Nets: local (eval batch norm, pooling, interpolation), so they tile exactly
LOCAL = ("2D", "2.5D")
#: settings with no weights of their own, so only VisCy's ``model_config`` can say
CONFIG_ONLY = {
    "UNeXt2": ("head_pool",),
    "fcmae": ("head_conv_pool",),
    "2D": ("residual", "task"),
    "2.5D": ("residual", "out_stack_depth"),
}
#: ``model_config`` keys that do not change a prediction (training, or implied by the weights)
IGNORED = ("backbone", "pretrained", "drop_path_rate", "encoder_drop_path_rate", "pretraining",
           "decoder_norm_layer", "dropout", "num_blocks")  # fmt: skip
#: ``model_config`` values zarrstain's rebuilds do not implement
UNSUPPORTED = {"decoder_mode": "pixelshuffle", "decoder_upsample_pre_conv": False}


def _family(network: str) -> str:
    return "fcmae" if network in ("fcmae", "UNeXt2_2D") else network


def _num_blocks(network: str, config: dict[str, Any]) -> int:
    """VisCy's ``num_blocks``: the padding divisor is ``2**num_blocks``."""
    if network in LOCAL:
        return len(config["num_filters"]) - 1
    if _family(network) == "fcmae":
        return len(config["dims"]) * (int(config["stem_kernel_size"][-1]).bit_length() - 1)
    return 6  # UNeXt2.num_blocks in VisCy: a constant


class VisCyPredictor(nn.Module):
    """A VisCy network with VisCy's prediction around it (padding, z windows, blending).

    Input (N, C, Z, Y, X) (networks that read several planes) or (N, C, Y, X) (one plane);
    any Y, X. The network is :attr:`model`, so a VisCy state dict's ``model.*`` keys load
    unchanged.
    """

    def __init__(self, network: str, config: dict[str, Any]) -> None:
        super().__init__()
        cls, _ = NETWORKS[network]
        self.model = cls(**config)
        self.depth = int(self.model.in_stack_depth)
        self.out_depth = int(self.model.out_stack_depth)
        if self.out_depth not in (1, self.depth):
            raise ModelError(
                f"VisCy {network} predicting {self.out_depth} planes from {self.depth} is not "
                "supported: VisCy writes either the window's planes or its centre"
            )
        # local networks: the engine mirrors the volume to the divisor (exact tiling); the
        # others: VisCy's zero padding of the whole field, inside
        self.multiple = 1 if network in LOCAL else 2 ** _num_blocks(network, config)

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, slice]]:
        """Zeros to a multiple of the divisor, split evenly (VisCy's ``DivisiblePad``)."""
        ny, nx = x.shape[-2:]
        py, px = -ny % self.multiple, -nx % self.multiple
        y0, x0 = py // 2, px // 2
        x = functional.pad(x, (x0, px - x0, y0, py - y0))
        return x, (slice(y0, y0 + ny), slice(x0, x0 + nx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planar = x.dim() == 4
        if planar:
            x = x.unsqueeze(2)
        nz = x.shape[2]
        if nz < self.depth:
            raise ParameterError(
                f"this VisCy model reads {self.depth} z-planes at a time; the stack has {nz}"
            )
        x, (ys, xs) = self._padded(x)
        out: torch.Tensor | None = None
        for z in range(nz - self.depth + 1):
            y = self.model(x[:, :, z : z + self.depth])[..., ys, xs]
            if out is None:
                out = y.new_zeros((*y.shape[:2], nz, *y.shape[3:]))
            if self.out_depth == 1:  # the window's centre plane
                out[:, :, z + self.depth // 2] = y[:, :, 0]
            else:  # each plane: the mean over the windows covering it
                out[:, :, z : z + self.depth] += y
        assert out is not None
        if self.out_depth > 1:
            first = torch.arange(nz, device=out.device)
            covering = torch.minimum(first, first.new_tensor(nz - self.depth)) - torch.clamp(
                first - self.depth + 1, min=0
            )
            out = out / (covering + 1).to(out.dtype).view(1, 1, -1, 1, 1)
        return out[:, :, 0] if planar else out


class VisCyArchitecture(Architecture):
    """``viscy``: a VisCy checkpoint's network, loaded from the file, and fine-tuned from it.

    ``zarrstain train --model viscy --init VSCyto3D.ckpt`` trains the checkpoint's network
    (its architecture and widths come from the file) with VisCy's loss
    (:func:`~zarrstain.models.viscy.loss.mixed_loss`: 0.5 × L1 + 0.5 × (1 − MS-SSIM)) on
    VisCy's normalization (median / IQR, inputs and targets); ``--paper`` adds VisCy's
    fine-tuning recipe (:attr:`paper_recipe`).
    """

    name = "viscy"
    loss_name = "VisCy MixedLoss: 0.5 L1 + 0.5 (1 - MS-SSIM, 2.5D)"
    #: VisCy's examples/configs/fit_example.yml: Adam(W) lr 1e-3, constant schedule, batch
    #: 32, 256×256 patches of the network's z window, median/IQR normalization, and its
    #: augmentations (blur there in pixels: here σ in µm at 0.65 µm pixels, a 20× objective)
    paper_recipe = {  # noqa: RUF012 - read only
        "lr": 1e-3,
        "optimizer": "adamw",
        "schedule": "constant",
        "batch_size": 32,
        "normalization": "median_iqr",
        "augment": {
            "affine": {"prob": 0.5, "rotate": 180.0, "shear": 0.05, "zoom": 0.3, "zoom_z": 0.2},
            "contrast": {"prob": 0.3, "gamma": [0.75, 1.5]},
            "intensity": {"prob": 0.5, "scale": 0.5},
            "noise": {"prob": 0.5, "std": 1.0},
            "blur": {"prob": 0.5, "sigma_um": [0.1625, 0.975]},
        },
    }

    def train_kwargs(self, config: Any) -> dict[str, Any]:
        """The network of the checkpoint training starts from (``init``), or
        ``model_kwargs`` naming one (``{"network": "UNeXt2", "config": {...}}``)."""
        given = dict(getattr(config, "model_kwargs", None) or {})
        if "network" in given:
            return given
        init = getattr(config, "init", None)
        if not init:
            raise ParameterError(
                "--model viscy fine-tunes a VisCy network: give the checkpoint to start from "
                "with --init (e.g. VSCyto3D.ckpt, or a zarrstain package of one)"
            )
        from zarrstain.models import load_model  # the loader, not at import: it finds us

        source = load_model(init)
        if source.architecture != self.name:
            raise ParameterError(
                f"--init {init} is a {source.architecture!r} model, not a VisCy network"
            )
        return {**dict(source.kwargs), **given}

    def channels(self, kwargs: dict[str, Any], n_inputs: int, n_outputs: int) -> dict[str, Any]:
        """The network's channels are its checkpoint's: the labels must count as many."""
        for what, n, key in (("input", n_inputs, "in_channels"),
                             ("target", n_outputs, "out_channels")):  # fmt: skip
            have = int(kwargs[key])
            if n and n != have:
                raise ParameterError(
                    f"this VisCy network has {have} {what} channel(s); name {have} "
                    f"(--{'input' if what == 'input' else 'target'}), not {n}"
                )
        return dict(kwargs)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """VisCy's ``MixedLoss(l1_alpha=0.5, l2_alpha=0, ms_dssim_alpha=0.5)``."""
        from zarrstain.models.viscy.loss import mixed_loss

        return mixed_loss(prediction, target)

    def build(self, **kwargs: Any) -> nn.Module:
        config = {k: tuple(v) if isinstance(v, list) and k.endswith("kernel_size") else v
                  for k, v in kwargs["config"].items()}  # fmt: skip
        return VisCyPredictor(kwargs["network"], config)

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        network, config = kwargs["network"], kwargs["config"]
        depth = int(config.get("in_stack_depth", 1))
        multiple = 2 ** _num_blocks(network, config)
        if network in LOCAL:
            r = unet_radius(config)
            radius = (depth - 1, r, r) if depth > 1 else (r, r)
            minimum = (depth, 1, 1) if depth > 1 else ()
            return Geometry(3 if depth > 1 else 2, multiple, (radius,), minimum=minimum)
        # y/x: not local, so no radius is exact; the padding multiple is the halo an
        # approximate tiling uses by default
        radius = (depth - 1, multiple, multiple) if depth > 1 else (multiple, multiple)
        minimum = (depth, 1, 1) if depth > 1 else ()
        return Geometry(3 if depth > 1 else 2, 1, (radius,), local=False, minimum=minimum)

    def bytes_per_voxel(self, kwargs: dict[str, Any]) -> int:
        return 4096  # ConvNeXt widths at a quarter of the resolution, a window at a time


def is_viscy_checkpoint(path: str | os.PathLike) -> bool:
    """A Lightning checkpoint file (``.ckpt``, a torch zip archive)."""
    p = Path(path)
    return p.is_file() and p.suffix == ".ckpt" and zipfile.is_zipfile(p)


class _AttributeDict(dict):
    """Stand-in for Lightning's ``AttributeDict`` (a dict), so loading needs no Lightning."""


_SAFE = [(_AttributeDict, name) for name in (
    "lightning.fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
)]  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    try:
        with torch.serialization.safe_globals(_SAFE):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: a file the user cannot load safely
        raise ModelError(
            f"{path} cannot be loaded safely (weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def _network(state: dict[str, torch.Tensor], stated: str | None, path: Path) -> str:
    if stated is not None:
        if stated not in NETWORKS:
            raise ModelError(
                f"{path}: VisCy architecture {stated!r} is not supported; supported: "
                + ", ".join(NETWORKS)
            )
        return stated
    if "model.encoder_stages.stages_0.blocks.0.conv_dw.weight" in state:
        return "UNeXt2"
    if "model.encoder.stem.conv3d.weight" in state:
        return "UNeXt2_2D"
    if "model.down_conv_block_0.Conv2d_0.weight" in state:
        return "2D"
    if "model.down_conv_block_0.Conv3d_0.weight" in state:
        return "2.5D"
    raise ModelError(
        f"{path} is a Lightning checkpoint but not of a VisCy network zarrstain runs "
        f"({', '.join(NETWORKS)})"
    )


def _config(network: str, state: dict, given: dict[str, Any], path: Path) -> dict[str, Any]:
    """The network's arguments: from the weights, completed and checked by ``model_config``."""
    try:
        config = NETWORKS[network][1](state, given)
    except KeyError as exc:
        raise ModelError(f"{path}: not a VisCy {network}: no tensor {exc}") from None
    family = _family(network)
    for key, value in given.items():
        if key in CONFIG_ONLY.get(family, ()):
            continue  # read with the weights
        if key in UNSUPPORTED:
            if (value or None) != (UNSUPPORTED[key] or None):  # False and None alike
                raise ModelError(
                    f"{path}: model_config {key}={value!r} is not supported (only "
                    f"{UNSUPPORTED[key]!r}, what VisCy's published models use)"
                )
        elif key in config:
            found = config[key]
            same = list(found) == list(value) if isinstance(found, tuple | list) else found == value
            if not same:
                raise ModelError(
                    f"{path}: model_config states {key}={value!r} but the weights have {found!r}"
                )
        elif key not in IGNORED:
            logger.warning("%s: model_config key %r is not known to zarrstain; ignored", path, key)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _plain(value: Any) -> Any:
    """JSON's types (tuples as lists), for the card."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load_viscy_checkpoint(
    path: str | os.PathLike, card: dict[str, Any] | str | os.PathLike | None = None
) -> Model:
    """A VisCy Lightning checkpoint as a :class:`~zarrstain.Model` (see the module docstring).

    Raises
    ------
    ModelError
        A file that does not load safely, is not a VisCy network zarrstain runs, or whose
        weights contradict the card's ``model_config``; a bad card.
    """
    p = Path(path)
    ckpt = _read(p)
    meta = read_card(p, card)
    hparams = ckpt.get("hyper_parameters") or {}
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    network = _network(state, meta.get("architecture") or hparams.get("architecture"), p)
    given = {**(hparams.get("model_config") or {}), **(meta.get("model_config") or {})}
    config = _config(network, state, given, p)
    window = meta.get("z_window_size")
    if window is not None and int(window) != config.get("in_stack_depth", 1):
        raise ModelError(
            f"the card of {p.name} states z_window_size={window} but the network reads "
            f"{config['in_stack_depth']} planes"
        )
    kwargs = {"network": network, "config": config, "in_channels": config["in_channels"],
              "out_channels": config["out_channels"]}  # fmt: skip
    if given:  # VisCy's own model_config (its backbone's name): what VisCy rebuilds from
        kwargs["viscy_model_config"] = _plain(given)
    arch = VisCyArchitecture()
    module = arch.build(**kwargs)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{p}: weights do not fit VisCy's {network}: {str(exc)[:300]}") from None
    module.eval()
    outputs = meta.get("output_labels") or [
        f"{p.stem} {i} (predicted)" for i in range(config["out_channels"])
    ]
    inputs = meta.get("input_labels") or []
    for what, labels, n in (("output", outputs, config["out_channels"]),
                            ("input", inputs, config["in_channels"])):  # fmt: skip
        if labels and len(labels) != n:
            raise ModelError(
                f"the card of {p.name} names {len(labels)} {what} channels {labels}; the "
                f"network has {n}"
            )
    geo = arch.geometry(kwargs)
    logger.info("loaded VisCy %s (%s) from %s", network, config, p)
    return Model(
        name=str(meta.get("name") or f"viscy:{p.stem}"),
        module=module,
        spatial_dims=geo.spatial_dims,
        input_labels=tuple(inputs),
        output_labels=tuple(outputs),
        divisor=geo.divisor,
        receptive_radius=geo.receptive_radius,
        normalization=str(meta.get("normalization") or "median_iqr"),
        architecture=arch.name,
        kwargs=kwargs,
        content_hash=state_dict_hash(module, arch.name, kwargs),
        source=str(p),
    )


#: the format :func:`zarrstain.load_model` reads this with (entry point ``zarrstain.formats``)
CHECKPOINT = FileFormat(
    name="viscy",
    description="a VisCy .ckpt",
    guess=is_viscy_checkpoint,
    reader=load_viscy_checkpoint,
    priority=40,
    takes_card=True,
)
