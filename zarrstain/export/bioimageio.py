"""Export a zarrstain model as a bioimage.io model package (``rdf.yaml`` + weights, zipped).

The description is built with ``bioimageio.spec`` (format 0.5), never written by hand, and the
package is what the zoo's CI checks: ``bioimageio.core.test_model`` passes on it
(``tests/models/formats/test_bioimageio.py``). It holds

- **both weight formats**: ``pytorch_state_dict`` whose architecture is
  :class:`~zarrstain.models.formats.bioimageio_net.ZarrstainNetwork` from the zarrstain
  library (declared in the package's conda environment), and ``torchscript``, which runs
  without zarrstain;
- **tensors**: input ``(batch, channel, [z,] y, x)`` named by the model's input labels, sizes
  ``divisor · (k + n)``; the output the same size with the receptive radius (or a smaller
  ``halo`` given) as its **halo**;
- **preprocessing** standing in for zarrstain's global normalization, with bioimage.io's
  per-sample ops: ``zero_mean_unit_variance`` for ``center`` / ``zscore`` (per sample and
  channel, which is zarrstain's ``zscore`` when a sample is a whole (t, c) volume),
  ``scale_range`` + ``clip`` for ``percentile``; ``median_iqr`` has no bioimage.io op and is
  refused. **Postprocessing**: ``scale_linear`` back to the target's units (the model's
  ``output_intensity``);
- **test tensors** computed by zarrstain on a sample input (synthetic cells by default), and a
  **cover** of the model's own panel on it (input | prediction);
- documentation, the zarrstain card (``config.zarrstain``: the labels, normalization and
  hash exactly, for a lossless load back), authors, citations and license.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zarrstain.datasets import CHANNELS, render_cells
from zarrstain.engine.predict import output_affine, predict, select_inputs
from zarrstain.errors import ParameterError, option
from zarrstain.evaluation.report import panel
from zarrstain.io.opened import open_store
from zarrstain.io.read import open_image
from zarrstain.models.formats.bioimageio_net import ZarrstainNetwork
from zarrstain.models.formats.torchscript import export_torchscript
from zarrstain.models.model import Model, state_dict_hash

__all__ = ["export_bioimageio", "sample_from_store"]

logger = logging.getLogger(__name__)


def _cite_entry(bio: Any, text: str, ref: str) -> Any:
    """A bioimage.io citation: a DOI (``10.…``) or a URL."""
    if ref.startswith(("http://", "https://")):
        return bio.CiteEntry(text=text, url=bio.HttpUrl(ref))
    return bio.CiteEntry(text=text, doi=bio.Doi(ref.removeprefix("https://doi.org/")))


def _sample(model: Model, sample: np.ndarray | None, halos: tuple[int, ...]) -> np.ndarray:
    """A raw input (1, C, [Z,] Y, X) of a size the model takes (synthetic cells by default)."""
    d, n = model.divisor, len(model.input_labels) or model.in_channels
    if sample is not None:
        sample = np.asarray(sample, np.float32)
        if sample.ndim != model.spatial_dims + 1 or sample.shape[0] != n:
            raise ParameterError(
                f"sample must be (C, {'Z, ' if model.spatial_dims == 3 else ''}Y, X) with "
                f"C = {n} (the model's inputs), not shape {sample.shape}"
            )
        crop = tuple(slice(0, s - s % d) for s in sample.shape[1:])
        if any(c.stop < m for c, m in zip(crop, _least(model, halos), strict=True)):
            raise ParameterError(
                f"sample {sample.shape} is too small: the package needs at least "
                f"{_least(model, halos)} (twice its halo plus the divisor); give a larger "
                f"sample, or declare a smaller halo with {option('halo=', '--halo N')} "
                "(tiles cut with it are then approximate)"
            )
        return sample[(slice(None), *crop)][None]
    least = _least(model, halos)
    side = max(least[-1], -(-96 // d) * d)
    nz = max(least[0], -(-16 // d) * d) if model.spatial_dims == 3 else 1
    clean = render_cells((1, nz, side, side), seed=0)
    rng = np.random.default_rng(0)
    labels = model.input_labels or tuple(CHANNELS[i % len(CHANNELS)] for i in range(n))
    planes = [
        rng.poisson(np.clip(clean[c if c in CHANNELS else "BF"][0], 0, None)) + 100.0
        for c in labels
    ]
    out = np.stack(planes).astype(np.float32)[None]
    return out if model.spatial_dims == 3 else out[:, :, 0]


def sample_from_store(
    store: str | os.PathLike, model: Model, side: int = 256, scene: str | None = None
) -> np.ndarray:
    """A sample input from a store: one scene (``scene``, else the store's first, logged), time
    0, the model's input channels, the middle plane (2D models), a centred crop of at most
    ``side`` in y and x."""
    src = open_store(store)
    if scene is None:
        scene = next(iter(src.layout.scenes))
        if len(src.layout.scenes) > 1:
            logger.info(
                "sample: scene %r, the first of %d in %s (choose with %s)",
                scene, len(src.layout.scenes), src.where, option("scene=", "--scene"),
            )  # fmt: skip
    image = open_image(src, scene)
    labels = select_inputs(image.coords["c"].values, model, None)
    data = image.sel(c=labels).isel(t=0)
    if model.spatial_dims == 2:
        data = data.isel(z=data.sizes["z"] // 2)
    crops = {}
    for axis in ("y", "x"):
        n = data.sizes[axis]
        start = max(0, (n - side) // 2)
        crops[axis] = slice(start, min(n, start + side))
    return np.asarray(data.isel(**crops).values, np.float32)


def _halos(model: Model, halo: int | None) -> tuple[int, ...]:
    """The outputs' declared halo per axis: the receptive radius, or ``halo`` when smaller."""
    if halo is not None and (not isinstance(halo, int) or halo < 0):
        raise ParameterError(f"halo must be a non-negative integer (voxels), not {halo!r}")
    return tuple(int(r) if halo is None else min(int(r), halo) for r in model.receptive_radius)


def _least(model: Model, halos: tuple[int, ...]) -> tuple[int, ...]:
    """Per spatial axis, the smallest input: twice the halo plus one divisor, rounded up."""
    d = model.divisor
    return tuple(-(-(2 * h + d) // d) * d for h in halos)


def _per_sample(model: Model) -> str | None:
    """The normalization a package declares: bioimage.io's ops are per sample."""
    if model.normalization in ("center", "zscore"):
        return "zscore"
    if model.normalization in ("percentile", "none"):
        return None if model.normalization == "none" else "percentile"
    raise ParameterError(
        f"model {model.name} normalizes with {model.normalization!r}, which bioimage.io has no "
        "preprocessing for (it has zero_mean_unit_variance and scale_range); it cannot export"
    )


def _reference(model: Model, x: np.ndarray) -> np.ndarray:
    """What the package computes for ``x``: zarrstain with the sample's own statistics."""
    five = x if model.spatial_dims == 3 else x[:, :, None]
    out = predict(five, model, halo="exact", normalize=_per_sample(model)).values
    return (out if model.spatial_dims == 3 else out[:, :, 0]).astype(np.float32)


def _axes(model: Model, labels: Sequence[str], output: bool, halos: tuple[int, ...]) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    names = ("z", "y", "x")[-model.spatial_dims :]
    axes: list[Any] = [bio.BatchAxis(), bio.ChannelAxis(channel_names=list(labels))]
    for name, radius, least in zip(names, halos, _least(model, halos), strict=True):
        aid = bio.AxisId(name)
        if output:
            ref = bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=aid)
            axes.append(
                bio.SpaceOutputAxisWithHalo(id=aid, size=ref, halo=int(radius))
                if radius
                else bio.SpaceOutputAxis(id=aid, size=ref)
            )
        else:  # the output, less its halo on both sides, is never empty
            size = bio.ParameterizedSize(min=least, step=model.divisor)
            axes.append(bio.SpaceInputAxis(id=aid, size=size))
    return axes


def _preprocessing(model: Model) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    spatial = [bio.AxisId(a) for a in ("z", "y", "x")[-model.spatial_dims :]]
    method = _per_sample(model)
    if method == "zscore":
        return [bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=spatial))]
    if method == "percentile":
        kw = bio.ScaleRangeKwargs(axes=spatial, min_percentile=0.5, max_percentile=99.5)
        return [bio.ScaleRangeDescr(kwargs=kw),
                bio.ClipDescr(kwargs=bio.ClipKwargs(min=0.0, max=1.0))]  # fmt: skip
    return []


def _postprocessing(model: Model) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    if not model.output_intensity:
        return []
    offset, scale = output_affine(model)
    if np.all(offset == 0) and np.all(scale == 1):
        return []
    kw = bio.ScaleLinearAlongAxisKwargs(axis=bio.AxisId("channel"), gain=[float(g) for g in scale],
                                        offset=[float(o) for o in offset])  # fmt: skip
    return [bio.ScaleLinearDescr(kwargs=kw)]


def _card(model: Model) -> dict[str, Any]:
    """The zarrstain card the package keeps, its hash that of the weights exported."""
    card = json.loads(json.dumps(model.describe()))
    card["content_hash"] = state_dict_hash(model.module, model.architecture, model.kwargs)
    if card["content_hash"] != model.content_hash:
        logger.warning(
            "model %s changed since it was loaded: the package has its new weights", model.name
        )
    return card


def _name(model: Model) -> str:
    """bioimage.io's name: 5 to 128 characters of letters, digits and ``_+- ()``."""
    name = "".join(c if c.isalnum() or c in "_+- ()" else " " for c in model.name).strip()
    return (name if len(name) >= 5 else f"zarrstain {name}")[:128]


def _documentation(model: Model, halos: tuple[int, ...]) -> str:
    exact = halos == tuple(model.receptive_radius)
    halo_note = (
        "the outputs' halo"
        if exact
        else f"the outputs' halo is {list(halos)}, smaller: tiles cut with it are approximate"
    )
    return f"""# {model.name}

A virtual-staining model exported by zarrstain: it predicts
{", ".join(model.output_labels)} from {", ".join(model.input_labels) or "its input channels"}.

- architecture: `{model.architecture}`, receptive radius {list(model.receptive_radius)}
  ({halo_note}), sizes multiples of {model.divisor}
- normalization in zarrstain: `{model.normalization}`, with **global** statistics of each
  (t, c) volume; this package declares bioimage.io's per-sample equivalent, which agrees
  when a sample is a whole volume (tiling a sample with per-tile statistics does not)
- zarrstain content hash: `{model.content_hash}`

Run it over a whole OME-Zarr plate, lazily and tiled exactly:

```bash
zarrstain predict plate.zarr --model this-package.zip
```

# Validation

The test tensors are zarrstain's own prediction of the sample with the sample's statistics;
`bioimageio.core`'s `test_model` reproduces them with both weight formats. zarrstain's tests
check that tiled prediction equals whole-field prediction and that the package loads back as
the same model.
"""


def export_bioimageio(
    model: Model,
    out: str | os.PathLike,
    *,
    sample: np.ndarray | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    description: str | None = None,
    halo: int | None = None,
    cite: Sequence[tuple[str, str]] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bioimage.io model package (a zip) at ``out``.

    Parameters
    ----------
    model
        A single-pass deterministic model (as for TorchScript).
    out
        The ``.zip`` to write.
    sample
        A raw input (C, [Z,] Y, X) for the test tensors and the cover (default: synthetic cells).
    authors
        Author names (default: ``"zarrstain user"``, with a warning: the zoo needs real ones).
    license
        An SPDX license id.
    description
        One line (default: what it predicts from what).
    halo
        The outputs' halo in voxels, when smaller than the receptive radius (the default):
        the smallest input is twice the halo plus the divisor, so deep 3D models need a
        smaller one to run on thin stacks; tiles a consumer cuts with it are approximate.
    cite
        What the package cites, as (text, DOI or URL) pairs; default: the method paper its
        family declares (:attr:`~zarrstain.models.Architecture.citation`).
    overwrite
        Replace ``out`` if it exists.

    Raises
    ------
    ParameterError
        ``out`` exists, nothing to cite (a family that declares no paper and no ``cite``), a
        model that cannot export (sampled, multi-pass, ``median_iqr``), a bad
        sample, or a description bioimage.io refuses (its message names the field).
    """
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio
    from pydantic import ValidationError

    out = Path(out)
    if out.exists() and not overwrite:
        raise ParameterError(
            f"{out} exists; pass {option('overwrite=True', '--overwrite')} to replace it"
        )
    if model.spec.stochastic or model.geometry.passes != 1:
        raise ParameterError(
            f"model {model.name} ({model.architecture}) samples; only single-pass deterministic "
            "models export to bioimage.io"
        )
    cite = list(cite) or ([model.spec.citation] if model.spec.citation else [])
    if not cite:
        raise ParameterError(
            f"the {model.architecture!r} family declares no paper to cite; name the model's: "
            + option('cite=[("Author et al. 2024, title", "10.1234/doi")]', '--cite "TEXT|DOI"')
        )
    if not authors:
        logger.warning("no authors given: the package names 'zarrstain user' (the zoo needs yours)")
    inputs = list(model.input_labels) or [f"input {i}" for i in range(model.in_channels)]
    halos = _halos(model, halo)
    x = _sample(model, sample, halos)
    y = _reference(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        net = ZarrstainNetwork(model.architecture, model.kwargs)
        net.module.load_state_dict(model.module.state_dict())
        torch.save(net.state_dict(), d / "weights.pt")
        export_torchscript(model, d / "weights_torchscript.pt")
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        mid = (x.shape[2] // 2,) if model.spatial_dims == 3 else ()
        panel([(inputs[0], x[(0, 0, *mid)]), (model.output_labels[0], y[(0, 0, *mid)])],
              d / "cover.png", title=model.name)  # fmt: skip
        (d / "README.md").write_text(_documentation(model, halos))
        env = {
            "name": "zarrstain",
            "channels": ["conda-forge"],
            "dependencies": ["python>=3.11", "pip", {"pip": ["zarrstain", "torch>=2.3"]}],
        }
        (d / "environment.yaml").write_text(json.dumps(env, indent=2))  # JSON is YAML
        version = bio.Version(torch.__version__.split("+")[0])
        try:
            descr = bio.ModelDescr(
                name=_name(model),
                description=description
                or f"Predicts {', '.join(model.output_labels)} from {', '.join(inputs)}",
                authors=[bio.Author(name=a) for a in (authors or ["zarrstain user"])],
                cite=[_cite_entry(bio, text, ref) for text, ref in cite],
                license=bio.LicenseId(license),
                documentation=bio.FileDescr(source=d / "README.md"),
                covers=[bio.FileDescr(source=d / "cover.png")],
                tags=["virtual-staining", "zarrstain", model.architecture],
                inputs=[bio.InputTensorDescr(
                    id=bio.TensorId("input"), axes=_axes(model, inputs, False, halos),
                    test_tensor=bio.FileDescr(source=d / "test_input.npy"),
                    preprocessing=_preprocessing(model))],
                outputs=[bio.OutputTensorDescr(
                    id=bio.TensorId("output"), axes=_axes(model, model.output_labels, True, halos),
                    test_tensor=bio.FileDescr(source=d / "test_output.npy"),
                    postprocessing=_postprocessing(model))],
                weights=bio.WeightsDescr(
                    pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                        source=d / "weights.pt", pytorch_version=version,
                        architecture=bio.ArchitectureFromLibraryDescr(
                            import_from="zarrstain.models.formats.bioimageio_net",
                            callable=bio.Identifier("ZarrstainNetwork"),
                            kwargs={"architecture": model.architecture,
                                    "kwargs": json.loads(json.dumps(model.kwargs))}),
                        dependencies=bio.FileDescr(source=d / "environment.yaml")),
                    torchscript=bio.TorchscriptWeightsDescr(
                        source=d / "weights_torchscript.pt", pytorch_version=version,
                        parent="pytorch_state_dict")),
                config={"zarrstain": _card(model)},
            )  # fmt: skip
        except ValidationError as exc:
            raise ParameterError(f"bioimage.io refuses the description: {exc}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.unlink()
        save_bioimageio_package(descr, output_path=out)
    logger.info("exported %s as a bioimage.io package %s", model.name, out)
    return out
