"""TorchScript files: export a zarrstain model, and run any scripted or traced module.

A TorchScript file holds a module without its Python code. zarrstain runs one like any model,
lazily and tiled, given what tiling needs to know and the file cannot say: the channel labels,
the input normalization, the divisor, the receptive radius (per spatial axis), the spatial
dims and whether every layer is local. That is a small **card** (JSON):

.. code-block:: json

    {"input_labels": ["BF"], "output_labels": ["DNA (predicted)"], "normalization": "zscore",
     "spatial_dims": 2, "divisor": 8, "receptive_radius": [44, 44], "local": true}

(optional: ``output_intensity`` [[offset, scale], ...] per output, ``name``). Files
:func:`export_torchscript` writes carry their card inside (a TorchScript extra file); for any
other file put it beside it as ``<file>.json`` (``model.pt`` → ``model.json``) or pass
``card=`` to :func:`~zarrstain.load_model`. Dask workers reload a model from its file with
the same card.

The exported module computes the channels zarrstain writes (the output head's reduction is
traced in), so it is usable without zarrstain: ``torch.jit.load("model.pt")(x)`` on a
normalized (N, C, [Z,] Y, X) batch whose sizes are multiples of the divisor. Only single-pass,
deterministic models export (a sampler is many passes with random numbers between them).
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zarrstain.errors import ModelError, ParameterError, option
from zarrstain.models.architecture import Architecture, BlockContext, Geometry
from zarrstain.models.format import FileFormat
from zarrstain.models.model import Model, state_dict_hash

__all__ = ["TorchScriptArchitecture", "export_torchscript", "is_torchscript", "load_torchscript"]

logger = logging.getLogger(__name__)

#: the card's name inside an exported file
CARD_FILE = "zarrstain_card.json"
FORMAT = "zarrstain-torchscript"
REQUIRED = ("input_labels", "output_labels", "normalization", "spatial_dims", "divisor",
            "receptive_radius")  # fmt: skip
SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


class TorchScriptArchitecture(Architecture):
    """``torchscript``: a loaded scripted/traced module; its geometry comes from its card."""

    name = "torchscript"
    trains = False

    def build(self, **kwargs: Any) -> nn.Module:
        raise ParameterError(
            "a TorchScript model is loaded from its file (zarrstain.load_model('model.pt')), "
            "not built"
        )

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        radius = tuple(int(r) for r in kwargs["receptive_radius"])
        return Geometry(int(kwargs["ndim"]), int(kwargs["divisor"]), (radius,),
                        local=bool(kwargs.get("local", True)))  # fmt: skip


class _Exported(nn.Module):
    """An architecture's inference forward and its head's reduction, as one traceable module."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.inner = model.spec.inference_module(model.module)
        self.spec, self.head = model.spec, model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.reduce(self.spec.run(self.inner, x, BlockContext.whole(x)))


def export_torchscript(model: Model, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Trace ``model`` into a TorchScript file at ``path``, its card inside.

    The trace is checked at a second input size (tracing can bake a shape into the graph): the
    file must compute what the model computes there too.

    Raises
    ------
    ParameterError
        A sampled or multi-pass model, or ``path`` exists and ``overwrite`` is False.
    ModelError
        The traced module differs from the model at another input size.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ParameterError(
            f"{path} exists; pass {option('overwrite=True', '--overwrite')} to replace it"
        )
    geo = model.geometry
    if model.spec.stochastic or geo.passes != 1:
        raise ParameterError(
            f"model {model.name} ({model.architecture}) runs {geo.passes} passes with random "
            "numbers between them; only single-pass deterministic models export to TorchScript"
        )
    n_in = max(len(model.input_labels), _in_channels(model))
    wrapper = _Exported(model).eval()
    d = geo.divisor
    side = max(4 * d, 64 // d * d)
    sizes = [(side,) * geo.spatial_dims, tuple(side + d * (i + 1) for i in range(geo.spatial_dims))]
    example, check = (
        torch.randn(1, n_in, *s, generator=torch.Generator().manual_seed(0)) for s in sizes
    )
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        want, got = wrapper(check), traced(check)
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise ModelError(
            f"model {model.name} does not trace: at input {tuple(check.shape)} the traced module "
            "differs from the model (a shape baked into the graph); it cannot be exported"
        )
    card = {
        "format": FORMAT,
        "name": model.name,
        "input_labels": list(model.input_labels),
        "output_labels": list(model.output_labels),
        "normalization": model.normalization,
        "spatial_dims": geo.spatial_dims,
        "divisor": geo.divisor,
        "receptive_radius": list(geo.receptive_radius),
        "local": geo.local,
        "output_intensity": [list(v) for v in model.output_intensity],
        "exported_from": {"architecture": model.architecture, "content_hash": model.content_hash},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path), _extra_files={CARD_FILE: json.dumps(card, indent=2)})
    logger.info("exported %s to TorchScript %s", model.name, path)
    return path


def _in_channels(model: Model) -> int:
    k = model.kwargs
    return int(k.get("in_channels", k.get("n_in_channels", 1)))


def is_torchscript(path: str | os.PathLike) -> bool:
    """A TorchScript archive (a zip holding a ``code/`` folder and ``constants.pkl``)."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names)


def load_torchscript(
    path: str | os.PathLike, card: dict | str | os.PathLike | None = None
) -> Model:
    """A TorchScript file as a :class:`~zarrstain.Model` (see the module docstring for the card).

    Raises
    ------
    ModelError
        No card (inside, beside as ``<file>.json``, or given), a card missing a key or with a
        bad value, or a file torch cannot load.
    """
    p = Path(path)
    extra = {CARD_FILE: ""}
    try:
        module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelError(f"{p} is not a TorchScript file torch can load: {exc}") from None
    module.eval()
    meta = _card(p, card, extra[CARD_FILE])
    kwargs = {"ndim": int(meta["spatial_dims"]), "divisor": int(meta["divisor"]),
              "receptive_radius": [int(r) for r in meta["receptive_radius"]],
              "local": bool(meta.get("local", True)),
              "in_channels": len(meta["input_labels"]),
              "out_channels": len(meta["output_labels"])}  # fmt: skip
    arch = TorchScriptArchitecture()
    geo = arch.geometry(kwargs)
    return Model(
        name=str(meta.get("name") or p.stem),
        module=module,
        spatial_dims=geo.spatial_dims,
        input_labels=tuple(str(c) for c in meta["input_labels"]),
        output_labels=tuple(str(c) for c in meta["output_labels"]),
        divisor=geo.divisor,
        receptive_radius=geo.receptive_radius,
        normalization=str(meta["normalization"]),
        architecture=arch.name,
        kwargs=kwargs,
        content_hash=state_dict_hash(module, arch.name, kwargs),
        source=str(p),
        output_intensity=tuple((float(o), float(s)) for o, s in meta.get("output_intensity") or []),
    )


def _card(path: Path, given: Any, embedded: str) -> dict[str, Any]:
    """The card: given, else embedded, else beside the file; checked."""
    beside = path.with_suffix(".json")
    where = "the card given"
    if isinstance(given, str | os.PathLike):
        beside, given, where = Path(given), None, str(given)
    if given is None and embedded:
        given, where = json.loads(embedded), f"the card inside {path.name}"
    if given is None and beside.is_file():
        try:
            given, where = json.loads(beside.read_text()), str(beside)
        except ValueError as exc:
            raise ModelError(f"cannot read the card {beside}: {exc}") from None
    if given is None:
        raise ModelError(
            f"{path} is a TorchScript file without a zarrstain card; put one beside it as "
            f"{beside.name} (keys: {', '.join(REQUIRED)}) or pass card= to load_model"
        )
    missing = [k for k in REQUIRED if k not in given]
    if missing:
        raise ModelError(f"{where} lacks {', '.join(missing)} (a card needs {', '.join(REQUIRED)})")
    ndim, radius = given["spatial_dims"], given["receptive_radius"]
    if ndim not in (2, 3) or not isinstance(radius, list) or len(radius) != ndim:
        raise ModelError(
            f"{where}: spatial_dims must be 2 or 3 and receptive_radius one radius per spatial "
            f"axis, not {ndim!r} and {radius!r}"
        )
    if not isinstance(given["divisor"], int) or given["divisor"] < 1:
        raise ModelError(f"{where}: divisor must be a positive integer, not {given['divisor']!r}")
    return given


#: the format :func:`zarrstain.load_model` reads this with (entry point ``zarrstain.formats``)
TORCHSCRIPT = FileFormat(
    name="torchscript",
    description="a TorchScript file",
    guess=is_torchscript,
    reader=load_torchscript,
    priority=30,
    takes_card=True,
)
