"""FluoGen's control branch on a frozen diffusion backbone: zero start, frozen, exact, packaged."""

from __future__ import annotations

import shutil

import dask.array as da
import numpy as np
import pytest
import torch

import zarrstain
from zarrstain import datasets
from zarrstain.engine.tiling import plan_tiles, predict_whole, run_tiled
from zarrstain.errors import ModelError, ParameterError
from zarrstain.models import create_model
from zarrstain.models.diffusion.control import backbone_kwargs
from zarrstain.training import TrainConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    plate = datasets.make_image(root / "img.zarr", shape=(1, 1, 64, 64), seed=3)
    common = {"targets": ["Membrane"], "model": "diffusion2d", "steps": 3, "batch_size": 2,
              "patch": [32, 32], "device": "cpu", "normalization": "zscore",
              "model_kwargs": {"width": 8, "mults": [1, 2]}}  # fmt: skip
    backbone = root / "backbone"
    zarrstain.train(plate, TrainConfig(inputs=[], unconditional=True, **common), backbone)
    return plate, backbone, common


def _branch(setup, out, **kwargs):
    plate, backbone, common = setup
    config = TrainConfig(
        inputs=["BF"], **{**common, "model": "control"}, backbone=str(backbone), **kwargs
    )
    return zarrstain.train(plate, config, out).model


def _jitter_branch(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.branch.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_a_zero_initialised_branch_is_the_backbone(setup):
    _, path, _ = setup
    backbone, inherited = backbone_kwargs(path)
    ref = {"content_hash": backbone.content_hash, "path": str(path), "embedded": False}
    control = create_model("control", input_labels=["BF"], output_labels=["Membrane (predicted)"],
                           normalization="zscore", **inherited, backbone=ref)  # fmt: skip
    x_t, cond = torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)
    t = torch.tensor([0, 400, 999])
    with torch.no_grad():
        assert torch.equal(control.module(torch.cat([cond, x_t], 1), t), backbone.module(x_t, t))
    assert control.geometry.local and control.geometry.radii == backbone.geometry.radii


def test_training_moves_the_branch_only_and_packages_it(setup, tmp_path):
    _, path, _ = setup
    backbone = zarrstain.load_model(path)
    model = _branch(setup, tmp_path / "branch")
    for k, v in backbone.module.state_dict().items():  # bitwise frozen
        assert torch.equal(model.module.backbone.state_dict()[k], v), k
    moved = [n for n, p in model.module.branch.named_parameters() if p.abs().sum() > 0]
    assert any(n.startswith("zero") for n in moved)  # the zero convolutions learned
    stored = torch.load(tmp_path / "branch" / "weights.pt", weights_only=True)
    assert stored and not any(k.startswith("backbone.") for k in stored)
    loaded = zarrstain.load_model(tmp_path / "branch")
    assert loaded.content_hash == model.content_hash
    assert loaded.kwargs["backbone"]["content_hash"] == backbone.content_hash
    # without its backbone, a referencing branch is refused; an embedding one stands alone
    embedded = _branch(setup, tmp_path / "embedded", embed_backbone=True)
    moved_away = tmp_path / "moved"
    shutil.copytree(path, moved_away)
    shutil.rmtree(path)
    try:
        with pytest.raises(ModelError, match="needs its backbone .* which is not there"):
            zarrstain.load_model(tmp_path / "branch")
        alone = zarrstain.load_model(tmp_path / "embedded")
        assert alone.content_hash == embedded.content_hash
    finally:
        shutil.copytree(moved_away, path)


def test_a_branch_refuses_a_different_backbone_and_non_backbones(setup, tmp_path):
    plate, path, common = setup
    with pytest.raises(ParameterError, match="is not a diffusion backbone"):
        fnet = tmp_path / "fnet"
        zarrstain.save_model(
            create_model("fnet", input_labels=["BF"], output_labels=["x"], ndim=2, depth=1), fnet
        )
        TrainConfig(inputs=["BF"], **{**common, "model": "control"}, backbone=str(fnet)).check()
    with pytest.raises(ParameterError, match="needs its backbone|trains on a frozen backbone"):
        TrainConfig(inputs=["BF"], **{**common, "model": "control"}).check()
    branch = tmp_path / "branch"
    _branch(setup, branch)
    other = tmp_path / "other"
    zarrstain.train(plate, TrainConfig(inputs=[], unconditional=True, **{**common, "seed": 5}),
                    other)  # fmt: skip
    card = (branch / "card.json").read_text().replace(str(path), str(other))
    (branch / "card.json").write_text(card)
    with pytest.raises(ModelError, match="not the .* this branch was trained on"):
        zarrstain.load_model(branch)


def test_branch_and_backbone_tile_exactly(setup, tmp_path):
    model = _jitter_branch(_branch(setup, tmp_path / "b")).with_options(steps=3, sampler="ddpm")
    data = np.random.default_rng(0).normal(size=(1, 1, 1, 90, 96)).astype(np.float32)
    whole = predict_whole(data, model, seed=2)
    plan = plan_tiles((1, 1, 90, 96), model, halo="exact", chunks={"y": 32, "x": 32})
    assert plan.n_blocks > 1 and plan.exact
    tiled = run_tiled(da.from_array(data), model, plan, seed=2).compute()
    assert np.abs(tiled - whole).max() <= 1e-5 * float(whole.max() - whole.min())


def test_cli_trains_a_branch_and_predicts_with_it(setup, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    plate, backbone, _ = setup
    runner = CliRunner()
    out = tmp_path / "branch"
    args = ["train", str(plate), "--model", "control", "--backbone", str(backbone), "--input",
            "BF", "--target", "Membrane", "--out", str(out), "--steps", "2", "--batch-size",
            "2", "--patch", "32x32", "--device", "cpu", "--normalization", "zscore"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    common = ["predict", str(plate), "--model", str(out), "--out", str(tmp_path / "o.zarr"),
              "--steps", "2", "--halo", "exact"]  # fmt: skip
    dry = runner.invoke(cli, [*common, "--dry-run"])
    assert dry.exit_code == 0 and "local; 2 passes" in dry.output, dry.output
    done = runner.invoke(cli, common)
    assert done.exit_code == 0, done.output
    written = zarrstain.open_image(tmp_path / "o.zarr")
    assert list(written.coords["c"].values) == ["Membrane (predicted)"]
    bad = runner.invoke(cli, [*args[:4], str(plate / "nothing"), *args[5:]])
    assert bad.exit_code != 0 and "backbone" in bad.output


def test_cli_quantile_branch_calibrates_predicts_and_evaluates(setup, tmp_path):
    import json

    from click.testing import CliRunner

    from cli.main import cli

    plate, backbone, _ = setup
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result

    run("train", plate, "--model", "control", "--backbone", backbone, "--input", "BF",
        "--target", "Membrane", "--head", "quantiles", "--out", tmp_path / "q", "--steps", "2",
        "--batch-size", "2", "--patch", "32x32", "--device", "cpu",
        "--normalization", "zscore")  # fmt: skip
    done = run("calibrate", plate, "--model", tmp_path / "q", "--steps", "2",
               "--out", tmp_path / "cal")  # fmt: skip
    assert "cqr, alpha 0.1" in done.output and "at sampler ddim, steps 2" in done.output
    store = shutil.copytree(plate, tmp_path / "img.zarr")
    run("predict", store, "--model", tmp_path / "cal")
    labels = list(zarrstain.open_image(store).coords["c"].values)[-3:]
    assert labels == [f"Membrane (predicted){s}" for s in ("", " lower", " upper")]
    report = run("evaluate", store, "--prediction", "Membrane (predicted)",
                 "--target", "Membrane", "--json")  # fmt: skip
    row = json.loads(report.output)["rows"][0]
    assert row["coverage"] > 0.5 and row["interval_width"] > 0  # calibrated on this very field
    bad = runner.invoke(cli, ["calibrate", str(plate), "--model", str(tmp_path / "q"),
                              "--samples", "2", "--out", str(tmp_path / "x")])  # fmt: skip
    assert bad.exit_code != 0
