"""Fine-tuning VisCy's networks: VisCy's loss, training through the CLI, export back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import FIXTURES

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ModelError, ParameterError
from zarrstain.models import load_model
from zarrstain.models.viscy.export import export_viscy_checkpoint
from zarrstain.models.viscy.loss import BETAS, mixed_loss, ms_ssim_25d

UNEXT2 = FIXTURES / "viscy" / "unext2.ckpt"


def _monai_ms_ssim(x: torch.Tensor, y: torch.Tensor, clamp: bool) -> torch.Tensor:
    """VisCy's ms_ssim_25d loop over MONAI's compute_ssim_and_cs, its building block."""
    from monai.metrics.regression import compute_ssim_and_cs

    terms = []
    for _ in BETAS:
        ssim, cs = compute_ssim_and_cs(x, y, 3, kernel_sigma=None, data_range=y.max(),
                                       kernel_size=(x.shape[2], 11, 11),
                                       kernel_type="uniform")  # fmt: skip
        ssim, cs = ssim.view(len(x), -1).mean(1), cs.view(len(x), -1).mean(1)
        terms.append(cs.clamp(min=1e-4) if clamp else cs)
        x = torch.nn.functional.avg_pool3d(x, (1, 2, 2))
        y = torch.nn.functional.avg_pool3d(y, (1, 2, 2))
    terms[-1] = ssim.clamp(min=1e-4) if clamp else ssim
    return torch.prod(torch.stack(terms) ** torch.tensor(BETAS).view(-1, 1), dim=0).mean()


@pytest.mark.parametrize("depth", [1, 5])
def test_ms_ssim_is_viscys_over_monais_ssim(depth):
    gen = torch.Generator().manual_seed(depth)
    y = torch.rand(2, 2, depth, 192, 192, generator=gen) * 3
    x = y + 0.4 * torch.randn(y.shape, generator=gen)
    for clamp in (False, True):
        torch.testing.assert_close(ms_ssim_25d(x, y, clamp=clamp), _monai_ms_ssim(x, y, clamp),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    assert float(ms_ssim_25d(y, y)) == pytest.approx(1.0, abs=1e-6)
    expected = 0.5 * torch.nn.functional.l1_loss(x, y) + 0.5 * (1 - _monai_ms_ssim(x, y, True))
    torch.testing.assert_close(mixed_loss(x, y), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 176×176 pixels"):
        ms_ssim_25d(x[..., :128, :128], y[..., :128, :128])


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("viscy") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 5, 192, 192), seed=4
    )


def _train(args, folder):
    from zarrstain.cli.main import cli

    base = ["train", "--model", "viscy", "--input", "BF", "--target", "DNA", "--target",
            "Membrane", "--patch", "5x192x192", "--batch-size", "2", "--normalization",
            "median_iqr", "--device", "cpu"]  # fmt: skip
    return CliRunner().invoke(cli, [*base, *args])


def test_a_viscy_checkpoint_fine_tunes_through_the_cli_predicts_and_exports(stack, tmp_path):
    from zarrstain.cli.main import cli

    # the fixture with the hyper-parameters VisCy's LightningModule saves (its backbone)
    init = tmp_path / "VSCyto3D.ckpt"
    ckpt = torch.load(UNEXT2, weights_only=False)
    ckpt["hyper_parameters"] = {"architecture": "UNeXt2", "model_config": {
        "in_channels": 1, "out_channels": 2, "in_stack_depth": 5,
        "backbone": "convnextv2_zarrstain", "stem_kernel_size": [5, 4, 4]}}  # fmt: skip
    torch.save(ckpt, init)
    out = tmp_path / "tuned"
    result = _train([str(stack), "--init", str(init), "--steps", "3", "--out", str(out)], tmp_path)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["architecture"] == "viscy" and card["training"]["loss"].startswith("VisCy")
    assert card["training"]["init"]["source"] == str(init)
    before, tuned = load_model(init), load_model(out)
    moved = [not torch.equal(a, b) for a, b in zip(before.module.state_dict().values(),
             tuned.module.state_dict().values(), strict=True)]  # fmt: skip
    assert any(moved)  # the weights were trained
    predicted = CliRunner().invoke(cli, ["predict", str(stack), "--model", str(out), "--out",
                                         str(tmp_path / "out.zarr")])  # fmt: skip
    assert predicted.exit_code == 0, predicted.output
    scene = zarrstain.open_scenes(tmp_path / "out.zarr")["A/1/0"]
    assert {"DNA (predicted)", "Membrane (predicted)"} <= set(scene.coords["c"].values)
    # back to VisCy's layout: read by the VisCy reader, the same weights and prediction
    ckpt = tmp_path / "export" / "tuned.ckpt"
    exported = CliRunner().invoke(cli, ["export", str(out), "--format", "viscy", "--out",
                                        str(ckpt)])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    back = load_model(ckpt)
    assert back.output_labels == tuned.output_labels and back.normalization == "median_iqr"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["model_config"]["backbone"] == "convnextv2_zarrstain"
    x = torch.randn(1, 1, 5, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.testing.assert_array_equal(back.module.eval()(x).numpy(), tuned.module.eval()(x).numpy())


def test_fine_tuning_names_what_is_missing(stack, tmp_path):
    no_init = _train([str(stack), "--steps", "1", "--out", str(tmp_path / "a")], tmp_path)
    assert no_init.exit_code == 1 and "give the checkpoint to start from with --init" in (
        no_init.output
    )  # fmt: skip
    from zarrstain.cli.main import cli

    one_target = CliRunner().invoke(cli, [
        "train", str(stack), "--model", "viscy", "--init", str(UNEXT2), "--input", "BF",
        "--target", "DNA", "--patch", "5x192x192", "--steps", "1", "--out", str(tmp_path / "b"),
    ])  # fmt: skip
    assert one_target.exit_code == 1 and "has 2 target channel(s); name 2" in one_target.output
    with pytest.raises(ModelError, match="only VisCy networks export"):
        export_viscy_checkpoint(zarrstain.testing.random_model(), tmp_path / "x.ckpt")
    with pytest.raises(ParameterError, match="a VisCy checkpoint is a .ckpt file"):
        export_viscy_checkpoint(load_model(UNEXT2), tmp_path / "x.pt")


def test_the_viscy_preset_is_viscys_fit_example():
    """VisCy's examples/configs/fit_example.yml, setting by setting (blur in µm here)."""
    from zarrstain.training import TrainConfig
    from zarrstain.training.augment import Augmentation

    config = TrainConfig.paper(model="viscy", init=str(UNEXT2), inputs=["BF"],
                               targets=["DNA", "Membrane"])  # fmt: skip
    config.check()
    assert (config.lr, config.optimizer, config.schedule, config.batch_size) == (
        1e-3, "adamw", "constant", 32
    )  # fmt: skip
    assert config.normalization == "median_iqr"
    aug = Augmentation.parse(config.augment)
    assert aug.settings("affine")["rotate"] == (-180.0, 180.0)
    assert aug.settings("affine")["shear"] == (-0.05, 0.05)
    assert aug.settings("contrast") == {"prob": 0.3, "gamma": (0.75, 1.5)}
    assert aug.settings("intensity")["scale"] == (-0.5, 0.5)
    assert aug.settings("noise") == {"prob": 0.5, "std": (0.0, 1.0)}


def test_vscyto2ds_fcmae_fine_tunes_in_2d(tmp_path):
    """VisCy's FCMAE (VSCyto2D's architecture) reads one plane: 2D patches, a 256 multiple."""
    from zarrstain.training import TrainConfig
    from zarrstain.training import train as run_training

    plate = datasets.make_plate(tmp_path / "p.zarr", rows=("A",), columns=("1",), fields=1,
                                shape=(1, 1, 256, 256), seed=2)  # fmt: skip
    config = TrainConfig(inputs=["BF"], targets=["DNA", "Membrane"], model="viscy",
                         init=str(FIXTURES / "viscy" / "fcmae.ckpt"), patch=[256, 256],
                         batch_size=1, steps=2, device="cpu",
                         normalization="median_iqr")  # fmt: skip
    result = run_training(plate, config, tmp_path / "tuned")
    assert result.model.spatial_dims == 2 and np.isfinite(result.history[-1]["loss"])
    assert result.model.kwargs["network"] == "UNeXt2_2D"
    assert zarrstain.load_model(tmp_path / "tuned").output_labels == (
        "DNA (predicted)", "Membrane (predicted)"
    )  # fmt: skip
