"""Plates on an object store: a real S3-compatible server (moto, on 127.0.0.1) whose every
request is counted. Reading, planning and predicting a plate costs O(1) metadata requests per
field (none per field with consolidated metadata), each input chunk is read once, and
``--out`` onto S3 writes a store that reads back through its consolidated metadata."""

from __future__ import annotations

import collections
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import zarrstain
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.testing import random_model

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a test dependency")
s3fs = pytest.importorskip("s3fs", reason="s3fs is a test dependency")

METADATA = ("zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata")


class Requests:
    """Every request the server answered: (method, path, query)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def clear(self) -> None:
        self.seen.clear()

    def count(self) -> collections.Counter:
        """Requests by kind: ``metadata`` documents, bucket ``list``ings, ``chunk`` reads."""
        kinds: collections.Counter = collections.Counter()
        for method, path, query in self.seen:
            if path.rsplit("/", 1)[-1] in METADATA:
                kinds["metadata"] += 1
            elif "list-type" in query:
                kinds["list"] += 1
            elif method == "GET":
                kinds["chunk"] += 1
            else:
                kinds[method] += 1
        return kinds


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """``(storage_options, requests)`` of a fresh moto S3 server with a bucket ``plates``."""
    from werkzeug.serving import make_server

    backend = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)
    requests = Requests()

    def app(environ, start_response):
        requests.seen.append(
            (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ.get("QUERY_STRING", ""))
        )
        return backend(environ, start_response)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = {
        "key": "testing",
        "secret": "testing",
        "endpoint_url": f"http://127.0.0.1:{server.server_port}",
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    s3fs.S3FileSystem(**options).mkdir("plates")
    yield options, requests
    server.shutdown()
    thread.join()


def _upload(s3, local: Path, name: str) -> str:
    options, _ = s3
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(local), f"plates/{name}", recursive=True)
    fs.invalidate_cache()
    return f"s3://plates/{name}"


def _plate(tmp_path: Path, columns: int, consolidated: bool) -> Path:
    path = zarrstain.datasets.make_plate(
        tmp_path / f"plate{columns}.zarr", rows=("A",),
        columns=tuple(str(c) for c in range(1, columns + 1)), fields=2, shape=(1, 1, 64, 64),
        chunks=(1, 1, 1, 32, 32), seed=columns,
    )  # fmt: skip
    if consolidated:
        with warnings.catch_warnings():  # v3 consolidated metadata is not in the spec yet
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(path))
    return path


MODEL = dict(ndim=2, depth=1, mult_chan=4, normalization="zscore")


@pytest.mark.parametrize("consolidated", [True, False], ids=["consolidated", "plain"])
def test_a_remote_plate_costs_o1_metadata_requests_per_field(s3, tmp_path, consolidated):
    options, requests = s3
    model = random_model(seed=5, **MODEL)
    counts, fields = {}, {}
    for columns in (2, 4):  # 4 and 8 fields
        local = _plate(tmp_path, columns, consolidated)
        url = _upload(s3, local, f"{tmp_path.name}-{columns}.zarr")
        requests.clear()
        plan = plan_prediction(
            url, model, out=tmp_path / f"out{columns}.zarr", storage_options=options,
            input_channels=["BF"],
        )  # fmt: skip
        plan.run()
        counts[columns], fields[columns] = requests.count(), len(plan.scenes)
        # what was predicted from S3 is what a local run predicts
        reference = plan_prediction(
            local, model, out=tmp_path / f"local{columns}.zarr", input_channels=["BF"]
        )
        reference.run()
        for s in plan.scenes:
            np.testing.assert_array_equal(
                zarrstain.open_image(tmp_path / f"out{columns}.zarr", s.scene).values,
                zarrstain.open_image(tmp_path / f"local{columns}.zarr", s.scene).values,
            )
    small, large = counts[2], counts[4]
    extra = fields[4] - fields[2]
    assert extra == 4
    per_field = (large["metadata"] - small["metadata"]) / extra
    if consolidated:
        assert per_field == 0, (small, large)  # the plate opens from one document
        assert large["metadata"] <= 6, large  # the root's probes (v2 and v3 names)
    else:
        # the field group and its two levels (each a HEAD and a GET), its well's share
        assert per_field <= 7, (small, large)
    # one listing per field (missing chunks are detected before anything runs)
    assert (large["list"] - small["list"]) / extra <= 1, (small, large)
    # every input chunk is read once: the statistics task keeps a field for its block
    assert large["chunk"] == 4 * fields[4], large


def test_out_on_s3_is_consolidated_and_reads_back_in_one_request_per_field(s3, tmp_path):
    options, requests = s3
    local = _plate(tmp_path, 2, consolidated=True)
    url = _upload(s3, local, f"{tmp_path.name}.zarr")
    model = random_model(seed=6, **MODEL)
    out = f"s3://plates/{tmp_path.name}-out.zarr"
    plan = plan_prediction(url, model, out=out, storage_options=options, input_channels=["BF"])
    assert plan.run() == {s.scene: "written" for s in plan.scenes}
    reference = tmp_path / "local.zarr"
    plan_prediction(local, model, out=reference, input_channels=["BF"]).run()

    requests.clear()
    images = zarrstain.open_scenes(out, storage_options=options)
    opened = requests.count()
    assert opened["metadata"] <= 6, opened  # the consolidated document, not one per image
    assert list(images) == [s.scene for s in plan.scenes]
    for scene, image in images.items():
        assert list(image.c.values) == ["DNA (predicted)"]
        np.testing.assert_array_equal(image.values, zarrstain.open_image(reference, scene).values)
    # a second run of the same command finds everything written
    again = plan_prediction(url, model, out=out, storage_options=options, input_channels=["BF"])
    assert set(again.run().values()) == {"unchanged"}
