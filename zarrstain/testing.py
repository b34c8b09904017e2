"""Helpers for testing code that uses zarrstain (and for zarrstain's own tests).

- :func:`raise_if_dask_computes`: fail if building a graph computes anything.
- :class:`RecordingStore`: a zarr store wrapper that records every key read.
- :func:`assert_valid_store`: validate a written store with independent checkers (yaozarrs and,
  when given, the NGFF JSON schemas).
- :func:`random_model`: a small model with random weights *and* random BatchNorm statistics, so
  that every layer matters in eval mode (fresh BatchNorms are nearly identities).

``yaozarrs`` and ``jsonschema`` come with the ``test`` extra (``pip install zarrstain[test]``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import torch
import zarr
from zarr.storage import WrapperStore

if TYPE_CHECKING:  # annotations only: zarr's buffer types are not public API
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

from zarrstain.models import create_model
from zarrstain.models.architecture import channel_labels
from zarrstain.models.heads import head_from_kwargs
from zarrstain.models.model import Model, state_dict_hash

__all__ = [
    "RecordingStore",
    "assert_valid_store",
    "chunk_keys",
    "raise_if_dask_computes",
    "random_model",
]

_METADATA_FILES = {"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"}


@contextlib.contextmanager
def raise_if_dask_computes() -> Iterator[None]:
    """Within the block, any dask compute raises ``RuntimeError`` (xarray's idiom)."""

    def scheduler(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"a dask graph was computed ({len(dsk)} tasks) where none should be")

    with dask.config.set(scheduler=scheduler):
        yield


class RecordingStore(WrapperStore):
    """Wraps a zarr store and records the key of every ``get``."""

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.reads: list[str] = []

    def _with_store(self, store: Any) -> RecordingStore:  # zarr re-wraps for read-only views
        clone = type(self)(store)
        clone.reads = self.reads
        return clone

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        self.reads.append(key)
        return await self._store.get(key, prototype, byte_range)


def chunk_keys(keys: list[str]) -> list[str]:
    """The keys among ``keys`` that are chunk data rather than metadata documents."""
    return [k for k in keys if k.rsplit("/", 1)[-1] not in _METADATA_FILES]


def _schemas_for(attrs: dict[str, Any], version: str) -> list[str]:
    """The NGFF schemas a group's attributes claim: a label image is an image too."""
    ome = attrs.get("ome", attrs) if version == "0.5" else attrs
    names = []
    for key, name in (
        ("plate", "plate"),
        ("well", "well"),
        ("image-label", "label"),
        ("multiscales", "image"),
        ("bioformats2raw.layout", "bf2raw"),
    ):
        if key in ome:
            names.append(name)
    return names


def _schema_validators(schema_dir: Path, version: str) -> dict[str, Any]:
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    resources = []
    for f in sorted((schema_dir / version).glob("*.schema")):
        doc = json.loads(f.read_text())
        resources.append(
            (doc["$id"], Resource.from_contents(doc, default_specification=DRAFT202012))
        )
    registry = Registry().with_resources(resources)
    out = {}
    for uri, res in resources:
        name = uri.rsplit("/", 1)[-1].removesuffix(".schema")
        cls = jsonschema.validators.validator_for(res.contents, jsonschema.Draft202012Validator)
        out[name] = cls(res.contents, registry=registry)
    return out


def assert_valid_store(path: str | os.PathLike, schema_dir: str | os.PathLike | None = None) -> int:
    """Validate an OME-Zarr store with yaozarrs and, optionally, the NGFF JSON schemas.

    Parameters
    ----------
    path
        Local store path.
    schema_dir
        Folder with ``0.4/`` and ``0.5/`` NGFF JSON schemas; skipped when None.

    Returns
    -------
    int
        Number of groups checked against a JSON schema.

    Raises
    ------
    AssertionError
        With the validator's message.
    """
    import yaozarrs

    root = zarr.open_group(str(path), mode="r")
    targets = [str(path)]
    if root.metadata.zarr_format == 2 and "bioformats2raw.layout" in root.attrs:
        # NGFF 0.4 bioformats2raw roots carry no version, which yaozarrs needs: check each series
        targets = [f"{path}/{name}" for name, g in root.groups() if "multiscales" in g.attrs]
    for target in targets:
        try:
            yaozarrs.validate_zarr_store(target)
        except Exception as exc:
            raise AssertionError(f"yaozarrs rejects {target}: {exc}") from exc
    if schema_dir is None:
        return 0
    version = "0.5" if root.metadata.zarr_format == 3 else "0.4"
    validators = _schema_validators(Path(schema_dir), version)
    checked = 0
    stack: list[tuple[str, zarr.Group]] = [("", root)]
    seen: set[str] = set()
    while stack:
        gpath, group = stack.pop()
        if gpath in seen:
            continue
        seen.add(gpath)
        attrs = group.attrs.asdict()
        for name in _schemas_for(attrs, version):
            errors = sorted(validators[name].iter_errors(attrs), key=lambda e: list(e.path))
            if errors:
                where = "/".join(str(p) for p in errors[0].absolute_path)
                raise AssertionError(
                    f"{path}/{gpath}: NGFF {version} {name} schema: "
                    f"{errors[0].message} at {where!r}"
                )
            checked += 1
        stack.extend((f"{gpath}/{p}".strip("/"), g) for p, g in group.groups())
    return checked


def random_model(
    architecture: str = "fnet",
    *,
    seed: int = 0,
    input_labels: tuple[str, ...] = ("BF",),
    output_labels: tuple[str, ...] = ("DNA (predicted)",),
    normalization: str = "center",
    **kwargs: Any,
) -> Model:
    """A registered architecture with seeded random weights and BatchNorm statistics.

    Parameters
    ----------
    architecture
        Registry name.
    seed
        Seeds the weights and statistics.
    input_labels, output_labels, normalization
        As in :func:`zarrstain.models.create_model`; with a ``head`` in ``kwargs``, output
        labels may name the targets only (``"DNA (predicted)"``), each then followed by its
        head's channels (``"DNA (predicted) std"``, ...).
    **kwargs
        The architecture's arguments (fnet default here: ``ndim=3, depth=2, mult_chan=4``).
    """
    if architecture == "fnet":
        kwargs = {"ndim": 3, "depth": 2, "mult_chan": 4, **kwargs}
    if kwargs.get("head"):  # one label per target given: one channel per head output
        outputs = head_from_kwargs(kwargs).outputs
        if len(output_labels) != len(outputs):
            output_labels = channel_labels(output_labels, outputs)
    torch.manual_seed(seed)
    model = create_model(
        architecture,
        input_labels=input_labels,
        output_labels=output_labels,
        normalization=normalization,
        **kwargs,
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.module.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.1 * torch.randn(n, generator=gen))
    kw = model.kwargs
    return dataclasses.replace(
        model, content_hash=state_dict_hash(model.module, model.architecture, kw)
    )
