"""bioimage.io model packages: run any zoo model over whole OME-Zarr plates.

``zarrstain.load_model("model.zip")`` (or a folder with ``rdf.yaml`` / ``bioimageio.yaml``)
reads the description with ``bioimageio.spec`` (older formats converted to 0.5) and builds the
network with ``bioimageio.core`` (``pytorch_state_dict`` with its architecture, else
``torchscript``). The package's tensor specs become the engine's geometry:

- **axes**: one input and one output tensor, with space axes (y, x) or (z, y, x), optional
  batch and channel axes in any order (:class:`BioimageioModule` permutes); output space axes
  the input's size (``SizeReference``), channel names → labels;
- **sizes**: ``ParameterizedSize(min, step)`` per axis: the steps are the divisor (the engine
  mirrors the volume to a multiple, as for any model) and the minima the smallest extent;
  a block still below its minimum (or sizes whose minimum is not a multiple of the step) is
  padded inside the module (reflecting) and cropped back; fixed sizes are refused;
- **halo**: the outputs' declared halo is the receptive radius, and the model is local; a
  package that declares none runs one whole field per block (non-local: exact, untiled);
- **preprocessing**: a per-sample statistic op becomes zarrstain's *global* normalization
  (statistics of each (t, c) volume, never of a tile) and the model's provenance says so
  (``kwargs["made_global"]``): ``zero_mean_unit_variance`` → ``zscore``, ``scale_range`` →
  ``percentile`` with its percentiles (clipped only when a ``clip`` follows). Fixed ops
  (``fixed_zero_mean_unit_variance``, ``scale_linear``, ``clip``, ``sigmoid``) run inside the
  module, before the network; postprocessing ops without statistics after it
  (``scale_linear``, ``clip``, ``sigmoid``, ``binarize``, ``softmax`` over channels);
  ``ensure_dtype`` is the writer's business. Anything else is refused by name.

Packages zarrstain exported (:mod:`~zarrstain.export.bioimageio`) load back as the
original model: the card in ``config.zarrstain`` and the state dict of
:class:`~zarrstain.models.formats.bioimageio_net.ZarrstainNetwork` rebuild it with the same content
hash.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zarrstain.errors import ModelError, ParameterError
from zarrstain.models.architecture import Architecture, Geometry
from zarrstain.models.format import FileFormat
from zarrstain.models.model import Model, state_dict_hash
from zarrstain.models.registry import get_architecture

__all__ = ["BioimageioArchitecture", "BioimageioModule", "is_bioimageio", "load_bioimageio"]

logger = logging.getLogger(__name__)

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
SPACE = ("z", "y", "x")


def is_bioimageio(path: str | os.PathLike) -> bool:
    """A folder or zip holding ``rdf.yaml`` / ``bioimageio.yaml``, or such a file itself."""
    p = Path(path)
    if p.is_dir():
        return any((p / n).is_file() for n in RDF_NAMES)
    if p.is_file() and (p.name in RDF_NAMES or p.name.endswith(".bioimageio.yaml")):
        return True
    if p.is_file() and p.suffix == ".zip" and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            return any(n in RDF_NAMES for n in z.namelist())
    return False


class BioimageioModule(nn.Module):
    """A package's network with its fixed pre/postprocessing, on zarrstain's (N, C, [Z,] Y, X).

    Parameters
    ----------
    net
        The network as bioimage.io builds it.
    order, out_order
        The package's input and output axes as letters (``"bcyx"``, ``"byxc"``, ``"yx"``).
    sizes
        Per space axis of zarrstain's order, ``(min, step)`` of the valid sizes.
    pre, post
        Fixed per-pixel ops, as :func:`_fixed_op` builds them.
    """

    def __init__(
        self,
        net: nn.Module,
        order: str,
        out_order: str,
        sizes: list[tuple[int, int]],
        pre: list[Any],
        post: list[Any],
    ) -> None:
        super().__init__()
        self.net, self.order, self.out_order, self.sizes = net, order, out_order, sizes
        self.pre, self.post = pre, post
        self.space = [a for a in "zyx" if a in order]

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The network on zarrstain's (N, C, space), in the package's axis orders."""
        if "b" not in self.order:  # one item at a time
            return torch.cat([self._run_batched(x[i : i + 1]) for i in range(len(x))])
        return self._run_batched(x)

    def _run_batched(self, x: torch.Tensor) -> torch.Tensor:
        have = "bc" + "".join(self.space)
        for a in "bc":
            if a not in self.order:  # size 1 here: batch items run one by one, one channel
                x, have = x.squeeze(have.index(a)), have.replace(a, "")
        y = self.net(x.permute(*(have.index(a) for a in self.order)))
        order = self.out_order
        for a in "cb":
            if a not in order:
                y, order = y.unsqueeze(0), a + order
        return y.permute(*(order.index(a) for a in "bc" + "".join(self.space)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[2:]
        pads: list[int] = []
        for n, (least, step) in zip(reversed(shape), reversed(self.sizes), strict=True):
            size = max(n, least) if not step else least + max(0, -(-(n - least) // step)) * step
            pads += [0, size - n]
        if any(pads):  # reflecting, as the engine pads; replicating where a block is too thin
            thin = any(p >= n for p, n in zip(pads[1::2], reversed(shape), strict=True))
            x = nn.functional.pad(x, pads, mode="replicate" if thin else "reflect")
        for op in self.pre:
            x = _apply(op, x)
        y = self._run(x)
        for op in self.post:
            y = _apply(op, y)
        return y[(slice(None), slice(None), *(slice(0, n) for n in shape))]


def _apply(op: tuple[Any, ...], x: torch.Tensor) -> torch.Tensor:
    name = op[0]
    if name == "affine":
        return x * op[1].to(x) + op[2].to(x)
    if name == "clip":
        return x.clamp(op[1], op[2])
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "binarize":
        return (x > op[1]).to(x.dtype)
    return torch.softmax(x, dim=1)  # "softmax" over the channels


def _per_channel(value: Any, n: int, ndim: int) -> torch.Tensor:
    """A scalar or per-channel list as a (1, C, 1, ...) tensor."""
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() not in (1, n):
        raise ModelError(f"a per-channel value {value!r} does not match {n} channels")
    return t.reshape(1, -1, *([1] * ndim))


def _fixed_op(op: Any, n: int, ndim: int, where: str) -> tuple[Any, ...] | None:
    """A bioimage.io op without statistics as a (name, params...) tuple; None: nothing to do."""
    kind, kw = op.id, getattr(op, "kwargs", None)
    if kind == "ensure_dtype":
        return None
    if kind == "scale_linear":
        return ("affine", _per_channel(kw.gain, n, ndim), _per_channel(kw.offset, n, ndim))
    if kind == "fixed_zero_mean_unit_variance":
        std = _per_channel(kw.std, n, ndim) + kw.eps
        return ("affine", 1 / std, -_per_channel(kw.mean, n, ndim) / std)
    if kind == "clip" and kw.min_percentile is None and kw.max_percentile is None:
        lo = -float("inf") if kw.min is None else float(kw.min)
        return ("clip", lo, float("inf") if kw.max is None else float(kw.max))
    if kind == "sigmoid":
        return ("sigmoid",)
    if kind == "binarize" and isinstance(kw.threshold, int | float):
        return ("binarize", float(kw.threshold))
    if kind == "softmax" and str(kw.axis) == "channel":
        return ("softmax",)
    raise ModelError(
        f"{where} op {kind!r} ({kw}) has no zarrstain equivalent: zarrstain runs statistics-free "
        "per-pixel ops inside the module and one normalization op before it"
    )


def _normalization(pre: list[Any], spatial: list[str], where: str) -> tuple[str, dict, str, list]:
    """(method, args, what was made global, the ops left) of a package's preprocessing."""
    ops = [op for op in pre if op.id != "ensure_dtype"]
    if not ops or ops[0].id not in ("zero_mean_unit_variance", "scale_range"):
        return "none", {}, "", ops
    first, rest = ops[0], ops[1:]
    axes = [str(a) for a in (first.kwargs.axes or [])]
    if "channel" in axes or "c" in axes:
        raise ModelError(f"{where}: {first.id} over the channels too is not supported")
    if first.id == "zero_mean_unit_variance":
        return "zscore", {}, "zero_mean_unit_variance per sample → zscore per (t, c) volume", rest
    kw = first.kwargs
    clip = (
        bool(rest) and rest[0].id == "clip" and rest[0].kwargs.min == 0 and rest[0].kwargs.max == 1
    )
    args = {"p_low": float(kw.min_percentile), "p_high": float(kw.max_percentile), "clip": clip}
    made = (f"scale_range {kw.min_percentile}-{kw.max_percentile} per sample → percentile per "
            "(t, c) volume")  # fmt: skip
    return "percentile", args, made, rest[1:] if clip else rest


class BioimageioArchitecture(Architecture):
    """``bioimageio``: a foreign zoo package's network, loaded from the package, not trained."""

    name = "bioimageio"
    trains = False

    def build(self, **kwargs: Any) -> nn.Module:
        raise ParameterError(
            "a bioimage.io model is loaded from its package (zarrstain.load_model('model.zip')), "
            "not built"
        )

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        radius = tuple(int(r) for r in kwargs["radius"])
        return Geometry(int(kwargs["ndim"]), int(kwargs["divisor"]), (radius,),
                        local=bool(kwargs["local"]),
                        minimum=tuple(int(m) for m in kwargs["minimum"]))  # fmt: skip


def _describe(path: Path) -> Any:
    try:
        from bioimageio.spec import load_model_description
    except ImportError:
        raise ModelError(
            f"{path} is a bioimage.io package; install bioimageio.core to run it "
            "(pip install 'zarrstain[bioimageio]')"
        ) from None
    try:
        return load_model_description(str(path), format_version="latest")
    except (ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path} is not a valid bioimage.io model description: {first}") from None


def _axes(axes: list[Any], where: str) -> tuple[str, dict[str, Any]]:
    """(letters in the package's order, space letter → axis)."""
    order, space = "", {}
    for axis in axes:
        kind, aid = axis.type, str(axis.id)
        if kind in ("batch", "channel"):
            order += kind[0]
        elif kind == "space" and aid in SPACE:
            order += aid
            space[aid] = axis
        else:
            raise ModelError(f"{where}: axis {aid!r} ({kind}) is not batch, channel or z/y/x")
    if not {"y", "x"} <= set(space):
        raise ModelError(f"{where}: zarrstain needs y and x space axes, not {order!r}")
    return order, space


def _sizes(space: dict[str, Any], where: str) -> list[tuple[int, int]]:
    sizes = []
    for aid in (a for a in SPACE if a in space):
        size = space[aid].size
        if not hasattr(size, "step"):
            raise ModelError(
                f"{where}: input axis {aid} has a fixed size {size!r}; zarrstain runs blocks of "
                "any size, so it needs a parameterized size (min, step)"
            )
        sizes.append((int(size.min), int(size.step)))
    return sizes


def _divisor(sizes: list[tuple[int, int]]) -> int:
    """The steps' multiple when every minimum is one of it (then the engine pads the whole
    volume by mirroring, exactly as for any model); else 1, and blocks are padded inside."""
    steps = [max(step, 1) for _, step in sizes]
    if all(least % step == 0 for (least, _), step in zip(sizes, steps, strict=True)):
        return math.lcm(*steps)
    logger.warning(
        "sizes %s are not multiples of their steps: each block is padded to a valid size "
        "inside the model, so tiles at the far edges differ slightly from the whole field",
        sizes,
    )
    return 1


def _native(descr: Any, path: Path) -> Model | None:
    """A package zarrstain exported: the original model, by its card and state dict."""
    card = (descr.config.model_extra or {}).get("zarrstain") if descr.config else None
    weights = descr.weights.pytorch_state_dict
    if not card or weights is None or str(weights.architecture.callable) != "ZarrstainNetwork":
        return None
    arch, kwargs = card["architecture"], card["kwargs"]
    module = get_architecture(arch).make_module(kwargs)
    state = torch.load(weights.get_reader(), map_location="cpu", weights_only=True)
    module.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    module.eval()
    model = Model(
        name=card["name"],
        module=module,
        spatial_dims=int(card["spatial_dims"]),
        input_labels=tuple(card["input_labels"]),
        output_labels=tuple(card["output_labels"]),
        divisor=int(card["divisor"]),
        receptive_radius=tuple(card["receptive_radius"]),
        normalization=card["normalization"],
        architecture=arch,
        kwargs=kwargs,
        content_hash=state_dict_hash(module, arch, kwargs),
        source=str(path),
        output_intensity=tuple((float(o), float(s)) for o, s in card["output_intensity"]),
    )
    if model.content_hash != card["content_hash"]:
        raise ModelError(f"{path}: the weights differ from the zarrstain card the package holds")
    return model


def load_bioimageio(path: str | os.PathLike) -> Model:
    """A bioimage.io model package as a :class:`~zarrstain.Model` (see the module docstring).

    Raises
    ------
    ModelError
        An invalid description, or one zarrstain cannot run (names the field and why).
    """
    p = Path(path)
    descr = _describe(p)
    native = _native(descr, p)
    if native is not None:
        return native
    where = f"{p.name} ({descr.name})"
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise ModelError(f"{where}: zarrstain runs models of one input and one output tensor")
    inp, out = descr.inputs[0], descr.outputs[0]
    order, space = _axes(list(inp.axes), f"{where} input")
    out_order, out_space = _axes(list(out.axes), f"{where} output")
    if set(out_space) != set(space):
        raise ModelError(f"{where}: output space axes {out_order!r} differ from the input's")
    radius = []
    for aid in (a for a in SPACE if a in space):
        size = out_space[aid].size
        if getattr(size, "axis_id", None) != space[aid].id or getattr(size, "offset", 0):
            raise ModelError(f"{where}: output axis {aid} is not the input's size ({size!r})")
        radius.append(int(getattr(out_space[aid], "halo", 0) or 0))
    channels = [a for a in inp.axes if a.type == "channel"]
    out_channels = [a for a in out.axes if a.type == "channel"]
    inputs = [str(c) for c in channels[0].channel_names] if channels else [str(inp.id)]
    outputs = [str(c) for c in out_channels[0].channel_names] if out_channels else [str(out.id)]
    ndim = len(space)
    method, args, made_global, rest = _normalization(list(inp.preprocessing), list(space), where)
    pre = [op for o in rest if (op := _fixed_op(o, len(inputs), ndim, f"{where} preprocessing"))]
    post = [op for o in out.postprocessing
            if (op := _fixed_op(o, len(outputs), ndim, f"{where} postprocessing"))]  # fmt: skip
    net, fmt = _network(descr, where)
    sizes = _sizes(space, f"{where} input")
    module = BioimageioModule(net, order, out_order, sizes, pre, post).eval()
    kwargs = {"ndim": ndim, "radius": radius, "local": any(radius), "divisor": _divisor(sizes),
              "minimum": [m for m, _ in sizes], "in_channels": len(inputs),
              "out_channels": len(outputs), "weights": fmt, "made_global": made_global}  # fmt: skip
    if not any(radius):
        logger.warning("%s declares no halo: it runs one whole field per block", where)
    if made_global:
        logger.info("%s: %s (zarrstain's statistics are global)", where, made_global)
    arch = BioimageioArchitecture()
    geo = arch.geometry(kwargs)
    return Model(
        name=f"bioimageio:{descr.name}",
        module=module,
        spatial_dims=ndim,
        input_labels=tuple(inputs),
        output_labels=tuple(outputs),
        divisor=geo.divisor,
        receptive_radius=geo.receptive_radius,
        normalization=method,
        architecture=arch.name,
        kwargs=kwargs,
        content_hash=state_dict_hash(module, arch.name, kwargs),
        source=str(p),
        normalization_args=args,
    )


def _network(descr: Any, where: str) -> tuple[nn.Module, str]:
    """The network from the package's weights: a state dict with its architecture, else
    TorchScript."""
    weights = descr.weights
    if weights.pytorch_state_dict is not None:
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        return load_torch_model(weights.pytorch_state_dict), "pytorch_state_dict"
    if weights.torchscript is not None:
        reader = weights.torchscript.get_reader()
        return torch.jit.load(reader, map_location="cpu"), "torchscript"
    raise ModelError(
        f"{where} has no pytorch_state_dict or torchscript weights (zarrstain runs torch models)"
    )


#: the format :func:`zarrstain.load_model` reads this with (entry point ``zarrstain.formats``)
PACKAGE = FileFormat(
    name="bioimageio",
    description="a bioimage.io package (rdf.yaml, folder or zip)",
    guess=is_bioimageio,
    reader=load_bioimageio,
    priority=50,
)
