"""Deterministic synthetic OME-Zarr stores: transmitted light → fluorescence, learnable.

Every scene shows cells (ellipsoids) with a nucleus and a membrane, imaged three ways:

- ``"BF"``: a phase-like brightfield: the cells' optical density seen through a defocus blur
  (difference of Gaussians, brighter halos at edges), the same for every channel of a cell;
- ``"DNA"``: the nuclei, with a little texture;
- ``"Membrane"``: the cell outlines.

With ``low_snr=True`` the fluorescence is also acquired at a hundredth of the exposure
(``"DNA lowSNR"``, ``"Membrane lowSNR"``: the same field, a few photons per pixel, with camera
read noise): a denoising task on the same grid.

Voxels are anisotropic (z steps 4× the xy pixel size), intensities are photon counts with shot
(Poisson) noise over a camera offset, stored as uint16. Both fluorescence channels are functions
of the same geometry that the brightfield reveals, so a small U-Net can learn them. Stores are
written with ome-zarr-py (an independent writer): NGFF 0.5 (zarr v3) by default, 0.4 (zarr v2)
on request. Time-lapses move the cells by a fixed drift per frame. Everything depends only on
``seed``, so tests and benchmarks see identical data on every machine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

__all__ = [
    "CHANNELS",
    "LOW_SNR",
    "make_bioformats2raw",
    "make_class_plate",
    "make_image",
    "make_plate",
    "render_cells",
    "save_image",
]

logger = logging.getLogger(__name__)

CHANNELS = ("BF", "DNA", "Membrane")
#: the low-SNR acquisitions of the fluorescence channels (``low_snr=True``)
LOW_SNR = ("DNA lowSNR", "Membrane lowSNR")
#: their exposure relative to the other channels', and the camera's read noise (counts)
LOW_SNR_EXPOSURE, READ_NOISE = 0.01, 2.0
#: physical pixel size in micrometers (z, y, x): anisotropic like a widefield z-stack
VOXEL_UM = (2.0, 0.65, 0.65)
_CAMERA_OFFSET = 100.0


def render_cells(
    shape: tuple[int, int, int, int],
    seed: int = 0,
    n_cells: int | None = None,
    translocation: float = 0.0,
) -> dict[str, np.ndarray]:
    """Render noise-free cells for each time point.

    Parameters
    ----------
    shape
        (t, z, y, x).
    seed
        Random seed; the same seed gives the same cells.
    n_cells
        Number of cells; by default about one per 40×40 pixels.
    translocation
        Share of the ``"Membrane"`` marker moved from the cell outline into the cytoplasm
        (0: an outline, 1: a filled cytoplasm with a dark nucleus): a treatment's phenotype
        that the brightfield, made from the same geometry, does not show.

    Returns
    -------
    dict
        ``"BF"``, ``"DNA"``, ``"Membrane"`` → float32 arrays of ``shape``, in expected photons.
    """
    t, nz, ny, nx = shape
    rng = np.random.default_rng(seed)
    n = n_cells or max(2, round(ny * nx / 1600))
    centers = rng.uniform([0.3 * nz, 0, 0], [0.7 * nz, ny, nx], size=(n, 3))
    radii = rng.uniform([3.0, 10.0, 10.0], [5.0, 15.0, 15.0], size=(n, 3))  # voxels; z anisotropic
    radii[:, 0] = np.minimum(radii[:, 0], max(nz / 3, 1.0))
    nuc_offset = rng.uniform(-0.2, 0.2, size=(n, 3)) * radii
    drift = rng.uniform(-1.5, 1.5, size=(n, 3)) * np.array([0.0, 1.0, 1.0])
    brightness = rng.uniform(0.6, 1.0, size=n)
    zz, yy, xx = np.meshgrid(
        np.arange(nz, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nx, dtype=np.float32),
        indexing="ij",
    )
    texture = ndimage.gaussian_filter(rng.standard_normal((nz, ny, nx)).astype(np.float32), 1.0)
    out = {c: np.zeros(shape, np.float32) for c in CHANNELS}
    for ti in range(t):
        density = np.zeros((nz, ny, nx), np.float32)
        dna = np.zeros_like(density)
        membrane = np.zeros_like(density)
        for k in range(n):
            c = centers[k] + drift[k] * ti
            d = np.sqrt(
                ((zz - c[0]) / radii[k, 0]) ** 2
                + ((yy - c[1]) / radii[k, 1]) ** 2
                + ((xx - c[2]) / radii[k, 2]) ** 2
            )
            cn = c + nuc_offset[k]
            dn = np.sqrt(
                ((zz - cn[0]) / (0.5 * radii[k, 0])) ** 2
                + ((yy - cn[1]) / (0.45 * radii[k, 1])) ** 2
                + ((xx - cn[2]) / (0.45 * radii[k, 2])) ** 2
            )
            body = 1.0 / (1.0 + np.exp((d - 1.0) * 8.0))
            nucleus = 1.0 / (1.0 + np.exp((dn - 1.0) * 8.0))
            density += 0.5 * body + 0.8 * nucleus
            dna = np.maximum(dna, brightness[k] * nucleus * (1.0 + 0.3 * texture))
            outline = np.exp(-(((d - 1.0) / 0.12) ** 2))
            if translocation:
                cytoplasm = np.clip(body - nucleus, 0, None)
                outline = (1 - translocation) * outline + translocation * 0.8 * cytoplasm
            membrane = np.maximum(membrane, outline)
        # Defocused phase-like contrast: a difference of Gaussians of the optical density,
        # wider along z (the microscope's axial blur), on a bright background.
        near = ndimage.gaussian_filter(density, (1.0, 1.0, 1.0))
        far = ndimage.gaussian_filter(density, (2.0, 3.0, 3.0))
        out["BF"][ti] = 4000.0 * (1.0 + 1.5 * (near - far) - 0.25 * near)
        out["DNA"][ti] = 1500.0 * np.clip(dna, 0, None) + 20.0
        out["Membrane"][ti] = 800.0 * membrane + 20.0
    return out


def _camera(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shot noise over a camera offset, as uint16 counts."""
    counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float64) + _CAMERA_OFFSET
    return np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _synthetic_tczyx(
    shape: tuple[int, int, int, int], seed: int, translocation: float = 0.0, low_snr: bool = False
) -> np.ndarray:
    clean = render_cells(shape, seed, translocation=translocation)
    rng = np.random.default_rng(seed + 1)
    channels = [_camera(clean[c], rng) for c in CHANNELS]
    if low_snr:  # its own generator: the other channels stay those of the same seed without
        weak = np.random.default_rng(seed + 2)
        for c in ("DNA", "Membrane"):
            counts = _camera(clean[c] * LOW_SNR_EXPOSURE, weak).astype(np.float64)
            counts += weak.normal(0.0, READ_NOISE, counts.shape)
            channels.append(np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16))
    return np.stack(channels, axis=1)


def _fmt(version: str) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    if version == "0.4":
        return FormatV04()
    if version == "0.5":
        return FormatV05()
    raise ValueError(f"ngff_version must be '0.4' or '0.5', not {version!r}")


def save_image(
    group: zarr.Group | str | os.PathLike,
    data: np.ndarray,
    axes: str,
    *,
    ngff_version: str = "0.5",
    channel_labels: Sequence[str] | None = None,
    scale: dict[str, float] | None = None,
    chunks: Sequence[int] | None = None,
    levels: int = 2,
) -> zarr.Group:
    """Write a numpy array as an OME-Zarr image with ome-zarr-py (data first, metadata last).

    Parameters
    ----------
    group
        A zarr group, or a path for a new store.
    data
        Array whose dims are named by ``axes`` (a subset of ``"tczyx"`` in that order).
    axes
        E.g. ``"tczyx"``, ``"czyx"``, ``"zyx"``, ``"yx"``.
    ngff_version
        ``"0.5"`` (zarr v3) or ``"0.4"`` (zarr v2).
    channel_labels
        Omero channel labels, one per channel.
    scale
        Physical pixel size per axis (micrometers for space).
    chunks
        Chunk shape; default one channel and one time point per chunk, 32 pixels in y and x.
    levels
        Number of pyramid levels (y and x halved per level).
    """
    from ome_zarr.writer import add_metadata, write_image

    fmt = _fmt(ngff_version)
    if not isinstance(group, zarr.Group):
        group = zarr.open_group(
            zarr.storage.LocalStore(Path(group)), mode="w", zarr_format=fmt.zarr_format
        )
    if chunks is None:
        chunks = [
            1 if a in "tc" else (n if a == "z" else min(n, 32))
            for a, n in zip(axes, data.shape, strict=True)
        ]
    units = {a: ("second" if a == "t" else "micrometer") for a in axes if a in "tzyx"}
    write_image(
        data,
        group,
        fmt=fmt,
        axes=list(axes),
        scale_factors=[2**i for i in range(1, levels)],
        scale={a: (scale or {}).get(a, 1.0) for a in axes},
        axes_units=units,
        storage_options={"chunks": tuple(chunks)},
    )
    if channel_labels is not None:
        hi = float(np.iinfo(data.dtype).max) if np.issubdtype(data.dtype, np.integer) else 1.0
        colors = ("FFFFFF", "0000FF", "00FF00", "FF0000", "FF00FF")
        channels = [
            {
                "label": str(lab),
                "color": colors[i % len(colors)],
                "active": True,
                "window": {"start": 0.0, "end": float(np.max(data)), "min": 0.0, "max": hi},
            }
            for i, lab in enumerate(channel_labels)
        ]
        nz = data.shape[axes.index("z")] if "z" in axes else 1
        rdefs = {"defaultT": 0, "defaultZ": nz // 2, "model": "color"}  # iohub needs all three
        add_metadata(group, {"omero": {"channels": channels, "rdefs": rdefs}}, fmt)
    return group


def _write_synthetic(
    group: zarr.Group | str | os.PathLike,
    shape: tuple[int, int, int, int],
    seed: int,
    ngff_version: str,
    levels: int = 2,
    chunks: Sequence[int] | None = None,
    translocation: float = 0.0,
    low_snr: bool = False,
) -> np.ndarray:
    """Render one synthetic (t, c, z, y, x) image and write it with its labels and voxel size."""
    data = _synthetic_tczyx(shape, seed, translocation, low_snr)
    save_image(
        group,
        data,
        "tczyx",
        ngff_version=ngff_version,
        channel_labels=CHANNELS + (LOW_SNR if low_snr else ()),
        scale={"t": 60.0, "z": VOXEL_UM[0], "y": VOXEL_UM[1], "x": VOXEL_UM[2]},
        chunks=chunks,
        levels=levels,
    )
    return data


def make_image(
    path: str | os.PathLike,
    *,
    shape: tuple[int, int, int, int] = (1, 16, 64, 64),
    ngff_version: str = "0.5",
    seed: int = 0,
    levels: int = 2,
    chunks: Sequence[int] | None = None,
    low_snr: bool = False,
) -> Path:
    """Write a synthetic single image (a time-lapse when ``shape[0] > 1``) with BF, DNA, Membrane.

    Parameters
    ----------
    path
        New store path (overwritten if it exists).
    shape
        (t, z, y, x); sizes need not be multiples of 16.
    ngff_version
        ``"0.5"`` or ``"0.4"``.
    seed
        Random seed.
    levels
        Pyramid levels.
    chunks
        (t, c, z, y, x) chunk shape; default (1, 1, z, 32, 32).
    low_snr
        Also the low-SNR acquisitions ``"DNA lowSNR"`` and ``"Membrane lowSNR"`` (a denoising
        task: a hundredth of the exposure, with read noise).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    data = _write_synthetic(path, shape, seed, ngff_version, levels, chunks, low_snr=low_snr)
    logger.info("wrote synthetic image %s %s", path, data.shape)
    return Path(path)


def make_plate(
    path: str | os.PathLike,
    *,
    rows: Sequence[str] = ("A", "B"),
    columns: Sequence[str] = ("1", "2", "3"),
    fields: int = 2,
    shape: tuple[int, int, int, int] = (1, 16, 64, 64),
    ngff_version: str = "0.5",
    seed: int = 0,
    levels: int = 2,
    chunks: Sequence[int] | None = None,
    low_snr: bool = False,
) -> Path:
    """Write a synthetic HCS plate: every well of ``rows`` × ``columns`` with ``fields`` fields.

    Each field gets its own cells (seeded from ``seed`` and its position). Scene ids are
    ``"A/1/0"``, ``"A/1/1"``, ... Other parameters as in :func:`make_image`.
    """
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    fmt = _fmt(ngff_version)
    root = zarr.open_group(
        zarr.storage.LocalStore(Path(path)), mode="w", zarr_format=fmt.zarr_format
    )
    wells = [f"{r}/{c}" for r in rows for c in columns]
    for w, well in enumerate(wells):
        well_group = root.require_group(well)
        for f in range(fields):
            _write_synthetic(
                well_group.require_group(str(f)),
                shape,
                seed + 1000 * w + 17 * f,
                ngff_version,
                levels,
                chunks,
                low_snr=low_snr,
            )
        write_well_metadata(well_group, [{"path": str(f)} for f in range(fields)], fmt=fmt)
    write_plate_metadata(
        root, list(rows), list(columns), wells, fmt=fmt, name="synthetic plate", field_count=fields
    )
    logger.info("wrote synthetic plate %s: %d wells × %d fields", path, len(wells), fields)
    return Path(path)


#: the class plate's treatments → the share of the marker moved into the cytoplasm
TREATMENTS = {"control": 0.0, "translocated": 1.0}


def make_class_plate(
    path: str | os.PathLike,
    *,
    rows: Sequence[str] = ("A", "B"),
    columns: Sequence[str] = ("1", "2", "3", "4"),
    fields: int = 2,
    shape: tuple[int, int, int, int] = (1, 1, 96, 96),
    ngff_version: str = "0.5",
    seed: int = 0,
    levels: int = 1,
) -> tuple[Path, Path]:
    """A synthetic plate whose wells carry a treatment the brightfield does not show.

    Odd columns are ``"control"`` (the ``"Membrane"`` marker outlines each cell), even
    columns ``"translocated"`` (the marker fills the cytoplasm: a translocation assay). The
    cells, and so the brightfield and the DNA, come from the same distribution in both; only
    the class tells the two marker patterns apart. Each well's group also gets the attribute
    ``"treatment"``.

    Returns
    -------
    (Path, Path)
        The plate, and its class map ``<plate>.classes.csv`` (``well,class``) beside it.
    """
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    fmt = _fmt(ngff_version)
    root = zarr.open_group(
        zarr.storage.LocalStore(Path(path)), mode="w", zarr_format=fmt.zarr_format
    )
    wells = [f"{r}/{c}" for r in rows for c in columns]
    classes = {}
    for w, well in enumerate(wells):
        treatment = list(TREATMENTS)[(columns.index(well.split("/")[1])) % len(TREATMENTS)]
        classes[well] = treatment
        group = root.require_group(well)
        for f in range(fields):
            _write_synthetic(group.require_group(str(f)), shape, seed + 1000 * w + 17 * f,
                             ngff_version, levels, translocation=TREATMENTS[treatment])  # fmt: skip
        write_well_metadata(group, [{"path": str(f)} for f in range(fields)], fmt=fmt)
        group.attrs["treatment"] = treatment
    write_plate_metadata(
        root, list(rows), list(columns), wells, fmt=fmt, name="class plate", field_count=fields
    )
    table = Path(str(path).rstrip("/") + ".classes.csv")
    table.write_text("well,class\n" + "".join(f"{w},{c}\n" for w, c in classes.items()))
    logger.info("wrote class plate %s (%d wells) and %s", path, len(wells), table)
    return Path(path), table


def make_bioformats2raw(
    path: str | os.PathLike,
    *,
    series: int = 2,
    shape: tuple[int, int, int, int] = (1, 8, 48, 40),
    ngff_version: str = "0.4",
    seed: int = 0,
    write_series_list: bool = True,
) -> Path:
    """Write a bioformats2raw-style collection: images ``0``, ``1``, ... under a layout root.

    Parameters
    ----------
    write_series_list
        Also write the ``OME`` group's ``series`` list (bioformats2raw ≥ 0.5 does).
    Other parameters
        As in :func:`make_image`.
    """
    fmt = _fmt(ngff_version)
    root = zarr.open_group(
        zarr.storage.LocalStore(Path(path)), mode="w", zarr_format=fmt.zarr_format
    )
    for s in range(series):
        _write_synthetic(root.require_group(str(s)), shape, seed + 31 * s, ngff_version)
    ome = root.require_group("OME")
    layout = {"bioformats2raw.layout": 3}
    if ngff_version == "0.5":
        root.attrs["ome"] = {"version": "0.5", **layout}
        if write_series_list:
            ome.attrs["ome"] = {"version": "0.5", "series": [str(s) for s in range(series)]}
    else:
        root.attrs.update(layout)
        if write_series_list:
            ome.attrs["series"] = [str(s) for s in range(series)]
    return Path(path)
