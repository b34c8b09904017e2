"""Models: the fnet U-Net, its receptive field, and pytorch_fnet checkpoints reproduced exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED
from torch import nn

from zarrstain.errors import ModelError
from zarrstain.models import FnetUNet, build, fnet_receptive_radius, load_model

FNET = SHARED / "fixtures" / "pytorch_fnet"


@pytest.fixture
def fixtures():
    if not FNET.is_dir():
        pytest.skip(f"{FNET} is absent (../shared not beside the checkout)")
    return FNET


@pytest.mark.parametrize("checkpoint", ["fnet3d", "fnet3d/model.p", "fnet3d_release1"])
def test_pytorch_fnet_3d_reproduces_expected_output(fixtures, checkpoint):
    model = load_model(fixtures / checkpoint)
    x = torch.from_numpy(np.load(fixtures / "input_3d_32x64x64.npy"))
    expected = np.load(fixtures / "expected_out_3d_forward.npy")
    np.testing.assert_allclose(model.forward(x).numpy(), expected, atol=1e-5)
    assert model.kwargs == {
        "ndim": 3,
        "depth": 4,
        "mult_chan": 8,
        "in_channels": 1,
        "out_channels": 1,
    }
    assert model.divisor == 16 and model.receptive_radius == (108, 108, 108)
    assert model.normalization == "center" and model.output_labels == (
        f"{(fixtures / checkpoint).parent.name if checkpoint.endswith('.p') else checkpoint}"
        " (predicted)",
    )


def test_both_formats_are_the_same_model(fixtures):
    master = load_model(fixtures / "fnet3d")
    release1 = load_model(fixtures / "fnet3d_release1")
    assert master.content_hash == release1.content_hash


def test_pytorch_fnet_2d_default_net(fixtures):
    model = load_model(fixtures / "fnet2d", output_label="DNA (predicted)")
    assert sum(p.numel() for p in model.module.parameters()) == 8_116_225
    assert model.spatial_dims == 2 and model.kwargs["mult_chan"] == 32
    assert model.output_labels == ("DNA (predicted)",)
    keys = [
        line.split("\t")[0] for line in (fixtures / "state_dict_2d.txt").read_text().splitlines()
    ]
    assert list(model.module.state_dict()) == keys
    x = torch.from_numpy(np.load(fixtures / "input_2d_96x128.npy"))
    assert model.forward(x).shape == (1, 1, 96, 128)


def test_foreign_and_broken_checkpoints_are_refused(fixtures, tmp_path):
    (tmp_path / "text.p").write_text("not a checkpoint")
    with pytest.raises(ModelError, match="cannot read .*text.p as a pytorch_fnet checkpoint"):
        load_model(tmp_path / "text.p")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.p")
    with pytest.raises(ModelError, match="not a pytorch_fnet checkpoint \\(no 'nn_state'"):
        load_model(tmp_path / "other.p")
    ckpt = torch.load(fixtures / "fnet3d" / "model.p", weights_only=True)
    ckpt["fnet_model_kwargs"]["nn_class"] = "fnet.nn_modules.fnet_nn_resnet.Net"
    torch.save(ckpt, tmp_path / "resnet.p")
    with pytest.raises(ModelError, match="'fnet_nn_resnet' is not supported"):
        load_model(tmp_path / "resnet.p")
    ckpt["fnet_model_kwargs"]["nn_class"] = "fnet.nn_modules.fnet_nn_3d_params.Net"
    ckpt["fnet_model_kwargs"]["nn_kwargs"]["depth"] = 3
    torch.save(ckpt, tmp_path / "lying.p")
    with pytest.raises(ModelError, match="states depth=3 but its weights have depth=4"):
        load_model(tmp_path / "lying.p")
    with pytest.raises(ModelError, match="no model at"):
        load_model(tmp_path / "missing")


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"nn_state": Evil()}, tmp_path / "evil.p")
    with pytest.raises(ModelError, match="cannot read"):
        load_model(tmp_path / "evil.p")


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_receptive_radius_matches_the_network(depth):
    """The declared radius equals the measured support of the gradient (ReLUs linearised)."""
    torch.manual_seed(depth)
    net = build("fnet", ndim=2, depth=depth, mult_chan=2).eval()
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Identity())
    n = 64 + 4 * fnet_receptive_radius(depth) // 16 * 16
    x = torch.randn(1, 1, n, 16, requires_grad=True)
    worst = 0
    centre = n // 2 // 16 * 16
    for p in range(centre, centre + 2**depth):
        (grad,) = torch.autograd.grad(net(x)[0, 0, p, :].sum(), x)
        rows = (grad[0, 0].abs().sum(1) > 0).nonzero().flatten()
        worst = max(worst, p - int(rows.min()), int(rows.max()) - p)
    assert worst == fnet_receptive_radius(depth)


def test_unet_sizes():
    net = FnetUNet(ndim=3, depth=2, mult_chan=4, in_channels=2, out_channels=3).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 2, 8, 12, 16)).shape == (1, 3, 8, 12, 16)
    assert net.divisor == 4
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build("resnet")
