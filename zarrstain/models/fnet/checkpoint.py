"""Load pytorch_fnet checkpoints (``model.p``) unchanged, in both of pytorch_fnet's formats.

- master (fnet 0.2): ``fnet_model_kwargs["nn_class"]`` = ``"fnet.nn_modules.<module>.Net"``;
- release_1 (2018): ``nn_module`` = ``"<module>"``;
- a file with only ``nn_state``: pytorch_fnet's loader takes it for the default 3D net.

Supported modules: ``fnet_nn_2d``, ``fnet_nn_3d`` (depth 4, 32 channels) and their ``_params``
variants. Depth, widths and channels are read from the tensors' shapes, and checked against any
kwargs the checkpoint states. Files are read with ``torch.load(..., weights_only=True)``: no
pickled code is ever executed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from zarrstain.errors import ModelError
from zarrstain.models.format import FileFormat
from zarrstain.models.model import Model, state_dict_hash
from zarrstain.models.nets.unet import FnetUNet, fnet_receptive_radius

__all__ = ["SUPPORTED_MODULES", "is_fnet_checkpoint", "load_fnet_checkpoint"]

logger = logging.getLogger(__name__)

SUPPORTED_MODULES = {
    "fnet_nn_2d": 2,
    "fnet_nn_2d_params": 2,
    "fnet_nn_3d": 3,
    "fnet_nn_3d_params": 3,
}
_PREFIX = "fnet.nn_modules."


def _checkpoint_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "model.p"
    if not p.is_file():
        raise ModelError(f"no pytorch_fnet checkpoint at {path!s}; expected model.p or its folder")
    return p


def is_fnet_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a pytorch_fnet checkpoint (``model.p`` or a folder with one)."""
    p = Path(path)
    return (p.is_file() and p.suffix == ".p") or (p.is_dir() and (p / "model.p").is_file())


def _module_name(ckpt: dict[str, Any], where: Path) -> tuple[str, dict[str, Any]]:
    if "fnet_model_kwargs" in ckpt:
        kwargs = ckpt["fnet_model_kwargs"] or {}
        nn_class = str(kwargs.get("nn_class", ""))
        if not nn_class.startswith(_PREFIX) or not nn_class.endswith(".Net"):
            raise ModelError(
                f"{where}: network class {nn_class!r} is not a pytorch_fnet U-Net; supported: "
                + ", ".join(f"{_PREFIX}{m}.Net" for m in SUPPORTED_MODULES)
            )
        name = nn_class[len(_PREFIX) : -len(".Net")]
        return name, dict(kwargs.get("nn_kwargs") or {})
    if "nn_module" in ckpt:
        return str(ckpt["nn_module"]), dict(ckpt.get("nn_kwargs") or {})
    return "fnet_nn_3d", {}  # what pytorch_fnet's own loader assumes


def _shape_of(state: dict[str, torch.Tensor], key: str, where: Path) -> tuple[int, ...]:
    if key not in state:
        raise ModelError(f"{where}: the weights lack {key!r}; this is not an fnet U-Net state dict")
    return tuple(state[key].shape)


def load_fnet_checkpoint(path: str | os.PathLike, *, output_label: str | None = None) -> Model:
    """Load a pytorch_fnet ``model.p`` (or the folder holding it) as a :class:`Model`.

    Parameters
    ----------
    path
        The checkpoint file or its folder.
    output_label
        Label of the predicted channel; default ``"<folder name> (predicted)"``.

    Raises
    ------
    ModelError
        Unreadable file, a network that is not one of pytorch_fnet's U-Nets, or weights that do
        not fit the stated architecture.
    """
    file = _checkpoint_file(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, foreign formats
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"cannot read {file} as a pytorch_fnet checkpoint ({first[:200]}); "
            "expected a model.p saved by pytorch_fnet"
        ) from None
    if not isinstance(ckpt, dict) or "nn_state" not in ckpt:
        keys = sorted(ckpt)[:6] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ModelError(f"{file} is not a pytorch_fnet checkpoint (no 'nn_state'; found {keys})")
    module_name, stated = _module_name(ckpt, file)
    if module_name not in SUPPORTED_MODULES:
        raise ModelError(
            f"{file}: network module {module_name!r} is not supported; supported: "
            + ", ".join(SUPPORTED_MODULES)
        )
    state = ckpt["nn_state"]
    first = _shape_of(state, "net_recurse.sub_2conv_more.conv1.weight", file)
    ndim = len(first) - 2
    if ndim != SUPPORTED_MODULES[module_name]:
        raise ModelError(
            f"{file}: {module_name} is {SUPPORTED_MODULES[module_name]}D but its "
            f"weights are {ndim}D"
        )
    depth = max(k.count("sub_u.") for k in state)
    found = {
        "depth": depth,
        "mult_chan": first[0],
        "in_channels": first[1],
        "out_channels": _shape_of(state, "conv_out.weight", file)[0],
    }
    for key, value in stated.items():
        if key in found and value != found[key]:
            raise ModelError(
                f"{file}: checkpoint states {key}={value} but its weights have {key}={found[key]}"
            )
    net = FnetUNet(ndim=ndim, **found)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{file}: weights do not fit an fnet U-Net: {str(exc)[:300]}") from None
    net.eval()
    kwargs = {"ndim": ndim, **found}
    name = file.parent.name or file.stem
    logger.info("loaded pytorch_fnet %s (%s) from %s", module_name, kwargs, file)
    return Model(
        name=f"pytorch_fnet:{name}",
        module=net,
        spatial_dims=ndim,
        input_labels=(),
        output_labels=(output_label or f"{name} (predicted)",),
        divisor=2**depth,
        receptive_radius=(fnet_receptive_radius(depth),) * ndim,
        normalization="center",
        architecture="fnet",
        kwargs=kwargs,
        content_hash=state_dict_hash(net, "fnet", kwargs),
        source=str(file),
    )


#: the format :func:`zarrstain.load_model` reads this with (entry point ``zarrstain.formats``)
CHECKPOINT = FileFormat(
    name="pytorch_fnet",
    description="a pytorch_fnet model.p (or a folder holding one)",
    guess=is_fnet_checkpoint,
    reader=load_fnet_checkpoint,
    priority=20,
)
