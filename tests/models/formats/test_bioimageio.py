"""bioimage.io packages: zarrstain's exports pass the zoo's test; foreign packages run on plates."""

from __future__ import annotations

import dataclasses
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import yaml

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ModelError, ParameterError
from zarrstain.export import export_bioimageio
from zarrstain.models import create_model, load_model, save_model
from zarrstain.models.model import state_dict_hash

bioimageio_core = pytest.importorskip("bioimageio.core")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _fnet(normalization: str = "zscore", **kwargs):
    model = create_model("fnet", input_labels=["BF"], output_labels=["DNA (predicted)"], ndim=2,
                         normalization=normalization, depth=2, mult_chan=8,
                         output_intensity=[(100.0, 20.0)], **kwargs)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    fresh = state_dict_hash(model.module, model.architecture, model.kwargs)
    return dataclasses.replace(model, content_hash=fresh)


@pytest.mark.parametrize("normalization", ["zscore", "percentile"])
def test_an_exported_package_passes_bioimageio_core_and_loads_back_identical(
    tmp_path, normalization
):
    model = _fnet(normalization)
    path = export_bioimageio(model, tmp_path / "pkg.zip", authors=["A. Tester"])
    summary = bioimageio_core.test_model(path)
    failed = [(d.name, [e.msg[:200] for e in d.errors]) for d in summary.details if d.errors]
    assert summary.status == "passed", failed
    tested = {d.name for d in summary.details}
    assert any("(torchscript)" in n for n in tested), tested
    assert any("(pytorch_state_dict)" in n for n in tested), tested
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert {"rdf.yaml", "cover.png", "README.md", "test_input.npy", "test_output.npy"} <= names
    assert rdf["outputs"][0]["axes"][-1]["halo"] == model.receptive_radius[-1]
    assert rdf["inputs"][0]["axes"][1]["channel_names"] == ["BF"]
    back = load_model(path)
    assert back.content_hash == model.content_hash and back.architecture == "fnet"
    assert back.output_intensity == model.output_intensity
    x = np.random.default_rng(1).gamma(2.0, 300.0, size=(2, 1, 1, 72, 88)).astype(np.float32)
    np.testing.assert_array_equal(
        zarrstain.predict(x, back).values, zarrstain.predict(x, model).values
    )


def test_models_bioimageio_cannot_describe_are_refused(tmp_path):
    with pytest.raises(ParameterError, match="median_iqr.*no preprocessing"):
        export_bioimageio(_fnet("median_iqr"), tmp_path / "a.zip")
    diffusion = create_model("diffusion", input_labels=["BF"], output_labels=["DNA (predicted)"],
                             ndim=2, width=4, mults=[1, 2], sample_steps=3)  # fmt: skip
    with pytest.raises(ParameterError, match="samples"):
        export_bioimageio(diffusion, tmp_path / "b.zip")
    (tmp_path / "c.zip").write_bytes(b"")
    with pytest.raises(ParameterError, match="exists"):
        export_bioimageio(_fnet(), tmp_path / "c.zip")


TINY_NET = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Two 3 x 3 convolutions: receptive radius 2."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.a = nn.Conv2d(1, width, 3, padding=1)
        self.b = nn.Conv2d(width, 2, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))
'''


def _save_package(tmp_path, filename: str, name: str, description: str, **fields):
    """A package of a foreign model, made with bioimageio.spec: what both packages share."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    (tmp_path / "README.md").write_text(f"# {name}\n\nA test network.\n")
    descr = bio.ModelDescr(
        name=name,
        description=description,
        authors=[bio.Author(name="Someone Else")],
        cite=[bio.CiteEntry(text="none", doi=bio.Doi("10.1038/s41592-018-0111-2"))],
        license=bio.LicenseId("MIT"),
        documentation=bio.FileDescr(source=tmp_path / "README.md"),
        **fields,
    )
    path = tmp_path / filename
    save_bioimageio_package(descr, output_path=path)
    return path


def _foreign_package(tmp_path, halo: int = 2, axes: str = "bcyx"):
    """A bioimage.io package built here with bioimageio.spec, not by zarrstain."""
    from bioimageio.spec.model import v0_5 as bio

    src = tmp_path / "tiny_net.py"
    src.write_text(textwrap.dedent(TINY_NET))
    namespace: dict = {}
    exec(compile(src.read_text(), str(src), "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["TinyNet"](width=4).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 300.0, size=(1, 1, 64, 64)).astype(np.float32)
    lo, hi = np.percentile(x, [1, 99.8])
    with torch.no_grad():
        scaled = np.clip((x - lo) / (hi - lo + 1e-6), 0, 1).astype(np.float32)
        y = net(torch.from_numpy(scaled)).numpy()
    y = 1 / (1 + np.exp(-y))
    if "b" not in axes:  # one item, no batch axis
        x, y = x[0], y[0]
    have = "bcyx" if "b" in axes else "cyx"
    perm = [have.index(a) for a in axes]
    np.save(tmp_path / "in.npy", x.transpose(perm))
    np.save(tmp_path / "out.npy", y.transpose(perm))

    def space(aid, output):
        if output:
            ref = bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(aid))
            if not halo:
                return bio.SpaceOutputAxis(id=bio.AxisId(aid), size=ref)
            return bio.SpaceOutputAxisWithHalo(id=bio.AxisId(aid), size=ref, halo=halo)
        return bio.SpaceInputAxis(id=bio.AxisId(aid), size=bio.ParameterizedSize(min=16, step=8))

    def tensor_axes(channels, output):
        made = {"b": bio.BatchAxis(), "c": bio.ChannelAxis(channel_names=channels)}
        return [made[a] if a in made else space(a, output) for a in axes]

    spatial = [bio.AxisId("y"), bio.AxisId("x")]
    return _save_package(
        tmp_path, f"tiny_{axes}.zip", "tiny foreign net",
        "two convolutions, percentile-normalized input, sigmoid output",
        inputs=[bio.InputTensorDescr(
            id=bio.TensorId("raw"), axes=tensor_axes(["phase"], False),
            test_tensor=bio.FileDescr(source=tmp_path / "in.npy"),
            preprocessing=[
                bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(
                    axes=spatial, min_percentile=1.0, max_percentile=99.8)),
                bio.ClipDescr(kwargs=bio.ClipKwargs(min=0.0, max=1.0))])],
        outputs=[bio.OutputTensorDescr(
            id=bio.TensorId("stain"), axes=tensor_axes(["nuclei", "actin"], True),
            test_tensor=bio.FileDescr(source=tmp_path / "out.npy"),
            postprocessing=[bio.SigmoidDescr()])],
        weights=bio.WeightsDescr(pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=tmp_path / "weights.pt", pytorch_version=bio.Version("2.13"),
            architecture=bio.ArchitectureFromFileDescr(
                source=src, callable=bio.Identifier("TinyNet"), kwargs={"width": 4}))),
    )  # fmt: skip


def _package_semantics(model, plane: np.ndarray) -> np.ndarray:
    """What the package declares, by hand: scale_range 1-99.8 of the image, clip, net, sigmoid."""
    lo, hi = np.percentile(plane, [1, 99.8])
    scaled = np.clip((plane - lo) / (hi - lo + 1e-6), 0, 1).astype(np.float32)
    with torch.no_grad():
        raw = model.module.net(torch.from_numpy(scaled[None, None])).numpy()[0]
    return 1 / (1 + np.exp(-raw))


def test_a_foreign_package_runs_over_an_ome_zarr_plate_tiled_exactly(tmp_path):
    package = _foreign_package(tmp_path)
    assert bioimageio_core.test_model(package).status == "passed"
    model = load_model(package)
    assert model.architecture == "bioimageio" and model.geometry.local
    assert model.input_labels == ("phase",) and model.output_labels == ("nuclei", "actin")
    assert model.normalization == "percentile"
    assert model.normalization_args == {"p_low": 1.0, "p_high": 99.8, "clip": True}
    assert "scale_range 1.0-99.8 per sample → percentile" in model.kwargs["made_global"]
    plate = datasets.make_plate(
        tmp_path / "plate.zarr", rows=("A",), columns=("1", "2"), fields=1, shape=(1, 1, 72, 88)
    )
    out = tmp_path / "out.zarr"
    plan = plan_prediction(plate, model, out=out, input_channels=["BF"], halo="exact",
                           chunks={"y": 32, "x": 32})  # fmt: skip
    assert plan.scenes[0].tiling["blocks"] > 1 and plan.scenes[0].tiling["exact"]
    plan.run()
    for scene in ("A/1/0", "A/2/0"):
        written = zarrstain.open_image(out, scene).sel(c=["nuclei", "actin"]).values[0, :, 0]
        image = zarrstain.open_image(plate, scene).sel(c=["BF"])
        whole = zarrstain.predict(image, model, halo="exact", input_channels=["BF"]).values[0, :, 0]
        np.testing.assert_allclose(written, whole, atol=1e-6)  # tiled = whole
        # inside the declared halo (which bioimage.io crops) = the package's semantics; zarrstain
        # mirrors the image at its edges where the network would see zeros
        plane = image.values[0, 0, 0].astype(np.float64)
        want = _package_semantics(model, plane)
        np.testing.assert_allclose(written[:, 2:-2, 2:-2], want[:, 2:-2, 2:-2], atol=1e-5)


def test_predictions_agree_with_bioimageio_cores_own(tmp_path):
    """Without a halo (bioimage.io's runner pads a haloed input before its statistics)."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import create_sample_for_model
    from bioimageio.spec import load_model_description

    package = _foreign_package(tmp_path, halo=0)
    x = np.random.default_rng(1).gamma(2.0, 300.0, size=(1, 1, 1, 72, 88)).astype(np.float32)
    ours = zarrstain.predict(x, load_model(package), halo="exact").values[0, :, 0]
    descr = load_model_description(package)
    sample = create_sample_for_model(descr, inputs={"raw": x[0, :, 0][None]})
    pipeline = create_prediction_pipeline(descr)
    theirs = pipeline.predict_sample_without_blocking(sample).members["stain"].data.values[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_axis_orders_and_packages_without_a_halo(tmp_path):
    """Channels last, no batch axis: permuted inside; no halo: one whole field per block."""
    package = _foreign_package(tmp_path, halo=0, axes="yxc")
    model = load_model(package)
    assert not model.geometry.local
    x = np.random.default_rng(2).gamma(2.0, 300.0, size=(2, 1, 1, 40, 48)).astype(np.float32)
    got = zarrstain.predict(x, model, halo="exact").values
    for t in range(2):
        want = _package_semantics(model, x[t, 0, 0].astype(np.float64))
        np.testing.assert_allclose(got[t, :, 0], want, atol=1e-5)


def test_cli_export_and_predict_with_the_package(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    save_model(_fnet(), tmp_path / "pkg")
    store = datasets.make_image(tmp_path / "img.zarr", shape=(1, 1, 64, 64))
    runner = CliRunner()
    zipped = tmp_path / "model.zip"
    done = runner.invoke(cli, ["export", str(tmp_path / "pkg"), "--format", "bioimageio",
                               "--out", str(zipped), "--author", "A. Tester",
                               "--sample", str(store)])  # fmt: skip
    assert done.exit_code == 0 and "as bioimageio" in done.output, done.output
    ran = runner.invoke(cli, ["predict", str(store), "--model", str(zipped),
                              "--out", str(tmp_path / "out.zarr")])  # fmt: skip
    assert ran.exit_code == 0, ran.output
    assert "DNA (predicted)" in zarrstain.open_image(tmp_path / "out.zarr").coords["c"].values


def test_bad_packages_give_one_clear_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "rdf.yaml").write_text("type: model\nformat_version: 0.5.4\nname: broken\n")
    with pytest.raises(ModelError, match="not a valid bioimage.io model description"):
        load_model(folder)


@pytest.mark.slow
def test_a_3d_model_exports_and_passes_too(tmp_path):
    model = create_model("fnet", input_labels=["BF"], output_labels=["DNA (predicted)"], ndim=3,
                         normalization="center", depth=2, mult_chan=4)  # fmt: skip
    path = export_bioimageio(model, tmp_path / "pkg3d.zip", authors=["A. Tester"])
    assert bioimageio_core.test_model(path).status == "passed"
    assert load_model(path).content_hash == model.content_hash


def test_a_torchscript_package_with_zero_mean_unit_variance_and_scale_linear(tmp_path):
    """TorchScript weights only; per-sample z-score made global; a per-channel affine after."""
    from bioimageio.spec.model import v0_5 as bio

    namespace: dict = {}
    exec(compile(textwrap.dedent(TINY_NET), "tiny_net.py", "exec"), namespace)
    torch.manual_seed(1)
    net = namespace["TinyNet"](width=4).eval()
    torch.jit.trace(net, torch.zeros(1, 1, 32, 32)).save(str(tmp_path / "net.pt"))
    gain, offset = np.array([2.0, 3.0]), np.array([10.0, 20.0])

    def semantics(plane: np.ndarray) -> np.ndarray:
        z = ((plane - plane.mean()) / (plane.std() + 1e-6)).astype(np.float32)
        with torch.no_grad():
            raw = net(torch.from_numpy(z[None, None])).numpy()[0]
        return raw * gain[:, None, None] + offset[:, None, None]

    x = np.random.default_rng(3).gamma(2.0, 300.0, size=(1, 1, 48, 48)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    np.save(tmp_path / "out.npy", semantics(x[0, 0].astype(np.float64))[None].astype(np.float32))
    size = bio.ParameterizedSize(min=16, step=8)
    spatial = [bio.AxisId("y"), bio.AxisId("x")]

    def out_axis(a):
        ref = bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a))
        return bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), size=ref, halo=2)

    package = _save_package(
        tmp_path, "scripted.zip", "tiny scripted net",
        "two convolutions, z-scored input, affine output",
        inputs=[bio.InputTensorDescr(
            id=bio.TensorId("raw"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=["phase"]),
                  bio.SpaceInputAxis(id=bio.AxisId("y"), size=size),
                  bio.SpaceInputAxis(id=bio.AxisId("x"), size=size)],
            test_tensor=bio.FileDescr(source=tmp_path / "in.npy"),
            preprocessing=[bio.ZeroMeanUnitVarianceDescr(
                kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=spatial))])],
        outputs=[bio.OutputTensorDescr(
            id=bio.TensorId("stain"),
            axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=["nuclei", "actin"]),
                  out_axis("y"), out_axis("x")],
            test_tensor=bio.FileDescr(source=tmp_path / "out.npy"),
            postprocessing=[bio.ScaleLinearDescr(kwargs=bio.ScaleLinearAlongAxisKwargs(
                axis=bio.AxisId("channel"), gain=list(gain), offset=list(offset)))])],
        weights=bio.WeightsDescr(torchscript=bio.TorchscriptWeightsDescr(
            source=tmp_path / "net.pt", pytorch_version=bio.Version("2.13"))),
    )  # fmt: skip
    assert bioimageio_core.test_model(package).status == "passed"
    model = load_model(package)
    assert model.kwargs["weights"] == "torchscript" and model.normalization == "zscore"
    assert "zero_mean_unit_variance per sample → zscore" in model.kwargs["made_global"]
    frames = np.random.default_rng(4).gamma(2.0, 300.0, size=(2, 1, 1, 48, 56))
    frames[1] *= 3  # another time point, its own statistics
    got = zarrstain.predict(frames.astype(np.float32), model, halo="exact").values
    for t in range(2):
        want = semantics(frames[t, 0, 0])
        np.testing.assert_allclose(
            got[t, :, 0, 2:-2, 2:-2], want[:, 2:-2, 2:-2], rtol=1e-4, atol=1e-3
        )


def test_a_smaller_halo_makes_smaller_packages_that_still_pass(tmp_path):
    """Deep models' exact halo demands large inputs; a smaller one is declared on request."""
    model = _fnet()
    path = export_bioimageio(model, tmp_path / "small.zip", halo=6, authors=["A. Tester"])
    with zipfile.ZipFile(path) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
    assert rdf["outputs"][0]["axes"][-1]["halo"] == 6
    assert rdf["inputs"][0]["axes"][-1]["size"]["min"] == 16  # 2 · 6 + 4, a multiple of 4
    assert "smaller: tiles cut with it are approximate" in readme and "# Validation" in readme
    assert bioimageio_core.test_model(path).status == "passed"
    assert load_model(path).content_hash == model.content_hash
    with pytest.raises(ParameterError, match="halo must be a non-negative integer"):
        export_bioimageio(model, tmp_path / "bad.zip", halo=-1)


def test_a_package_cites_its_familys_paper_or_what_it_is_given(tmp_path, monkeypatch):
    model = _fnet()
    path = export_bioimageio(model, tmp_path / "fnet.zip", authors=["A. Tester"])
    with zipfile.ZipFile(path) as z:
        cited = yaml.safe_load(z.read("rdf.yaml"))["cite"]
    assert cited[0]["doi"] == "10.1038/s41592-018-0111-2"  # fnet's: pytorch_fnet's paper
    # a family that declares no paper is not given pytorch_fnet's: the user names one
    monkeypatch.setattr(type(model.spec), "citation", ())
    with pytest.raises(ParameterError, match="'fnet' family declares no paper to cite"):
        export_bioimageio(model, tmp_path / "none.zip")
    paper = ("Doe et al. 2026, a model", "https://example.org/paper")
    path = export_bioimageio(model, tmp_path / "own.zip", authors=["A. Tester"], cite=[paper])
    with zipfile.ZipFile(path) as z:
        cited = yaml.safe_load(z.read("rdf.yaml"))["cite"]
    assert cited == [{"text": paper[0], "url": paper[1]}]
