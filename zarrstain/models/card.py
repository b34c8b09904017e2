"""zarrstain model packages: a folder with a human-readable card and the weights.

::

    my-model/
      card.json     architecture and kwargs, channel labels, normalization, divisor,
                    receptive field, training provenance, content hash (indented JSON)
      weights.pt    the state dict (torch.save; loaded with weights_only=True)
      README.md     the card rendered for people

The card is the single source of truth; divisor and receptive field are recomputed from the
architecture on load and must agree with it. The content hash of the loaded weights must equal
the card's, so a package whose weights were swapped or damaged is refused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zarrstain._version import __version__
from zarrstain.errors import ModelError
from zarrstain.models.format import FileFormat
from zarrstain.models.model import Model, state_dict_hash
from zarrstain.models.registry import get_architecture

__all__ = ["CARD", "WEIGHTS", "is_package", "load_package", "save_model"]

logger = logging.getLogger(__name__)

CARD, WEIGHTS, FORMAT = "card.json", "weights.pt", "zarrstain-model"


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a zarrstain model card."""
    return (Path(path) / CARD).is_file()


def save_model(
    model: Model,
    path: str | os.PathLike,
    *,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
    state: tuple[str, Any] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write ``model`` as a model package folder.

    Parameters
    ----------
    model
        The model (its module is saved as a state dict).
    path
        The folder to create.
    training
        Training provenance for the card (data, steps, loss, metrics, …).
    overwrite
        Replace an existing package at ``path``.
    state
        ``(file name, object)``: extra tensors to store beside the weights (``torch.save``;
        e.g. the optimizer state of a training run), part of the same atomic write.
    files
        Relative path → bytes: more files of the package (a training run's curves), written
        in the same atomic write.

    Returns
    -------
    pathlib.Path
        The package folder. It appears complete or not at all (written aside, then renamed).
    """
    dest = Path(path)
    if dest.exists() and not (overwrite and is_package(dest)):
        raise ModelError(
            f"{dest} exists; choose another folder"
            + (" or pass overwrite=True" if is_package(dest) else " (it is not a model package)")
        )
    card = {
        "format": FORMAT,
        "format_version": 1,
        # run options belong to one prediction, not to the package
        **{k: v for k, v in model.describe().items() if k not in ("source", "options")},
        # of the weights as saved (a module changed in place since the model was made would
        # otherwise get a stale hash, and the package would load as damaged)
        "content_hash": state_dict_hash(model.module, model.architecture, model.kwargs),
        "training": training or {},
        "weights": WEIGHTS,
        "zarrstain_version": __version__,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        torch.save(model.spec.saved_state(model.module, model.kwargs), tmp / WEIGHTS)
        if state is not None:
            torch.save(state[1], tmp / state[0])
        for name, data in (files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "README.md").write_text(_render(card, files or {}))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved model %s to %s", model.name, dest)
    return dest


def _render(card: dict[str, Any], files: Mapping[str, bytes]) -> str:
    lines = [f"# {card['name']}", "", "zarrstain model package.", ""]
    for key in (
        "architecture",
        "kwargs",
        "spatial_dims",
        "input_labels",
        "output_labels",
        "normalization",
        "output_intensity",
        "divisor",
        "receptive_radius",
        "local",
        "content_hash",
        "zarrstain_version",
    ):
        lines.append(f"- **{key}**: `{json.dumps(card[key])}`")
    if "curves.png" in files:  # a trained package: its loss and validation curves
        lines += ["", "![training curves](curves.png)"]
    if card.get("training"):
        lines += ["", "## Training", "", "```json", json.dumps(card["training"], indent=2), "```"]
    return "\n".join(lines) + "\n"


def _field(card: dict[str, Any], key: str, where: Path) -> Any:
    if key not in card:
        raise ModelError(f"{where}: the card lacks {key!r}; re-save the model with save_model")
    return card[key]


def load_package(path: str | os.PathLike) -> Model:
    """Load a model package written by :func:`save_model`.

    Raises
    ------
    ModelError
        A card that cannot be read or is not a zarrstain card, an unknown architecture,
        weights that do not fit it or whose hash differs from the card's.
    """
    folder = Path(path)
    card_file = folder / CARD
    try:
        card = json.loads(card_file.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model card {card_file}: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise ModelError(f"{card_file} is not a zarrstain model card (format {FORMAT!r})")
    if int(card.get("format_version", 0)) > 1:
        raise ModelError(
            f"{card_file} has format_version {card['format_version']}; this zarrstain reads 1: "
            "upgrade zarrstain"
        )
    arch, kwargs = _field(card, "architecture", card_file), dict(_field(card, "kwargs", card_file))
    try:
        spec = get_architecture(arch)
        module = spec.make_module(kwargs)
        geo = spec.geometry(kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{card_file}: cannot build {arch!r} with {kwargs}: {exc}") from None
    weights = folder / str(card.get("weights", WEIGHTS))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        spec.load_state(module, state, kwargs)
    except ModelError:
        raise
    except Exception as exc:  # missing file, pickle error, wrong keys or shapes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(
            f"{weights}: weights do not load into {arch} {kwargs}: {first[:300]}"
        ) from None
    module.eval()
    content_hash = state_dict_hash(module, arch, kwargs)
    if card.get("content_hash") and card["content_hash"] != content_hash:
        raise ModelError(
            f"{weights} does not match its card (content hash {content_hash[:12]}, card "
            f"{str(card['content_hash'])[:12]}); the package was modified or damaged"
        )
    return Model(
        name=str(card.get("name") or folder.name),
        module=module,
        spatial_dims=geo.spatial_dims,
        input_labels=tuple(_field(card, "input_labels", card_file)),
        output_labels=tuple(_field(card, "output_labels", card_file)),
        divisor=geo.divisor,
        receptive_radius=geo.receptive_radius,
        normalization=str(card.get("normalization", "none")),
        output_intensity=tuple((float(o), float(s)) for o, s in card.get("output_intensity") or []),
        architecture=arch,
        kwargs=kwargs,
        content_hash=content_hash,
        source=str(folder),
    )


#: the format :func:`zarrstain.load_model` reads this with (entry point ``zarrstain.formats``)
PACKAGE = FileFormat(
    name="zarrstain",
    description="a zarrstain model folder (card.json + weights.pt)",
    guess=is_package,
    reader=load_package,
    priority=10,
)
