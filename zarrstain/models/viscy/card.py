"""The card of a VisCy checkpoint: zarrstain JSON, or VisCy's own LightningCLI predict YAML.

See :mod:`zarrstain.models.viscy.family` for the keys. A VisCy YAML is read for
``model.init_args.architecture`` / ``model_config`` and ``data.init_args.source_channel`` /
``target_channel`` / ``z_window_size`` / ``normalizations`` (``NormalizeSampled`` of the
source channel: median and IQR → ``"median_iqr"``, mean and std → ``"zscore"``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from zarrstain.errors import ModelError
from zarrstain.models.architecture import output_label

__all__ = ["KEYS", "read_card"]

logger = logging.getLogger(__name__)

KEYS = ("input_labels", "output_labels", "normalization", "name", "architecture", "model_config",
        "z_window_size")  # fmt: skip
SUFFIXES = (".json", ".yml", ".yaml")
#: VisCy's NormalizeSampled (subtrahend, divisor) → zarrstain's method
NORMALIZATIONS = {("median", "iqr"): "median_iqr", ("mean", "std"): "zscore"}


def read_card(ckpt: Path, given: dict[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    """The card for ``ckpt``: ``given`` (a dict or a file), else a file beside it, else empty."""
    if isinstance(given, dict):
        return _checked(given, "the card given")
    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise ModelError(f"no card at {path}; pass a JSON card or VisCy's predict YAML")
        return _from_file(path)
    for suffix in SUFFIXES:
        beside = ckpt.with_suffix(suffix)
        if beside.is_file():
            return _from_file(beside)
    logger.warning(
        "%s has no card (%s beside it): channel labels default to %r; give a card for the "
        "channels' names",
        ckpt.name,
        ckpt.with_suffix(".json").name,
        f"{ckpt.stem} 0 (predicted)",
    )
    return {}


def _from_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return _checked(json.loads(text), str(path))
        import yaml

        data = yaml.safe_load(text) or {}
    except ValueError as exc:  # json and yaml errors both derive from ValueError
        raise ModelError(f"cannot read the card {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ModelError(f"the card {path} is not a mapping")
    if "model" in data or "data" in data:
        return _checked(_from_lightning(data, path), str(path))
    return _checked(data, str(path))


def _checked(card: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(card) - set(KEYS))
    if unknown:
        raise ModelError(
            f"{where}: unknown key(s) {', '.join(unknown)}; a card takes {', '.join(KEYS)}"
        )
    for key in ("input_labels", "output_labels"):
        value = card.get(key)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise ModelError(f"{where}: {key} must be a list of channel labels, not {value!r}")
    if not isinstance(card.get("model_config") or {}, dict):
        raise ModelError(f"{where}: model_config must be a mapping, not {card['model_config']!r}")
    return dict(card)


def _from_lightning(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """A card from VisCy's LightningCLI config (``viscy predict -c predict.yml``)."""
    model = (data.get("model") or {}).get("init_args") or {}
    init = (data.get("data") or {}).get("init_args") or {}
    card: dict[str, Any] = {}
    if "architecture" in model:
        card["architecture"] = model["architecture"]
    if model.get("model_config"):
        card["model_config"] = dict(model["model_config"])
    sources = _labels(init.get("source_channel"))
    if sources:
        card["input_labels"] = sources
    targets = _labels(init.get("target_channel"))
    if targets:
        card["output_labels"] = [output_label(t) for t in targets]
    if init.get("z_window_size") is not None:
        card["z_window_size"] = int(init["z_window_size"])
    method = _normalization(init.get("normalizations"), sources, path)
    if method is not None:
        card["normalization"] = method
    return card


def _labels(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _normalization(transforms: list[Any] | None, sources: list[str], path: Path) -> str | None:
    """The method of the source's ``NormalizeSampled``; ``"none"`` when the list has none for
    it; None (the default, median_iqr) when the config lists no normalizations."""
    if transforms is None:
        return None
    for t in transforms:
        if not isinstance(t, dict) or not str(t.get("class_path", "")).endswith("NormalizeSampled"):
            continue
        args = t.get("init_args") or {}
        keys = _labels(args.get("keys"))
        if sources and not set(keys) & set(sources):
            continue
        pair = (args.get("subtrahend", "mean"), args.get("divisor", "std"))
        if pair not in NORMALIZATIONS:
            raise ModelError(
                f"{path}: VisCy normalization subtrahend={pair[0]!r}, divisor={pair[1]!r} has "
                "no zarrstain method (median/iqr → median_iqr, mean/std → zscore); put "
                '"normalization" in a JSON card instead'
            )
        level = args.get("level", "fov_statistics")
        if level != "fov_statistics":
            logger.info(
                "%s: VisCy normalizes with %s; zarrstain's statistics are per time point of "
                "each field of view",
                path,
                level,
            )
        return NORMALIZATIONS[pair]
    return "none"
