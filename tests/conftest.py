"""Shared fixtures: small synthetic stores (built once, copied per test) and the shared/ folder."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from zarrstain import datasets
from zarrstain.testing import assert_valid_store

ROOT = Path(__file__).resolve().parents[1]
#: the test tree (its folders mirror the package's: io/, models/<family>/, engine/, cli/, e2e/)
TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
SHARED = Path(os.environ.get("ZARRSTAIN_SHARED", ROOT.parent / "shared"))
SCHEMAS = SHARED / "ngff-schemas"

# Small enough to be quick, odd sizes (not multiples of 16) on purpose.
SHAPE = (2, 6, 37, 42)


@pytest.fixture(scope="session")
def schema_dir() -> Path | None:
    """The NGFF JSON schemas, or None when ../shared is absent (a user's clone)."""
    return SCHEMAS if SCHEMAS.is_dir() else None


@pytest.fixture
def validate(schema_dir):
    """Validate a store with yaozarrs, and with the NGFF JSON schemas when they are present."""

    def check(path: Path) -> None:
        assert_valid_store(path, schema_dir)

    return check


@pytest.fixture(scope="session")
def _source_stores(tmp_path_factory) -> dict[tuple[str, str], Path]:
    base = tmp_path_factory.mktemp("sources")
    stores = {}
    for version in ("0.4", "0.5"):
        stores["image", version] = datasets.make_image(
            base / f"image{version}.zarr", shape=SHAPE, ngff_version=version, seed=1
        )
        stores["plate", version] = datasets.make_plate(
            base / f"plate{version}.zarr",
            rows=("A", "B"),
            columns=("1", "2"),
            fields=2,
            shape=(1, 4, 33, 30),
            ngff_version=version,
            seed=2,
        )
        stores["bioformats2raw", version] = datasets.make_bioformats2raw(
            base / f"bf2raw{version}.zarr", series=2, ngff_version=version, seed=3
        )
    return stores


@pytest.fixture
def make_store(_source_stores, tmp_path):
    """A fresh copy of a prebuilt synthetic store: ``make_store("plate", "0.4")``."""

    def copy(kind: str, version: str) -> Path:
        dst = tmp_path / f"{kind}{version}.zarr"
        shutil.copytree(_source_stores[kind, version], dst)
        return dst

    return copy


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``path`` (to prove a store is untouched)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def assert_same(actual, expected):
    """Equal up to float32 rounding inside the convolution kernels.

    torch picks convolution algorithms by tensor size, which can change the order of float
    sums (~1e-7 relative); a halo one step short of exact errs by 1e-3 and more.
    """
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * np.abs(expected).max())


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``zarrstain demo`` run once per session: (the CliRunner result, its folder)."""
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    folder = tmp_path_factory.mktemp("demo") / "zarrstain-demo"
    return CliRunner().invoke(cli, ["demo", str(folder)]), folder


@pytest.fixture
def http_root(tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def model3d():
    """A small random 3D fnet (depth 2: divisor 4, receptive radius 24, exact halo 24): the
    exact-tiling and test-time augmentation tests share it."""
    from zarrstain.testing import random_model

    return random_model(ndim=3, depth=2, mult_chan=4, seed=3)


@pytest.fixture(scope="module")
def model2d():
    """A small random 2D fnet (depth 3), shared as :func:`model3d`."""
    from zarrstain.testing import random_model

    return random_model(ndim=2, depth=3, mult_chan=4, seed=4)
