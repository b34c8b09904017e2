"""The lean inference copy of the fnet U-Net computes what the original module computes."""

from __future__ import annotations

import pytest
import torch

from zarrstain.models.cache import ModelHandle, placed_module
from zarrstain.models.fnet.inference import lean_fnet
from zarrstain.testing import random_model


@pytest.mark.parametrize(
    ("ndim", "kwargs", "shape"),
    [
        (3, {"depth": 4, "mult_chan": 8}, (2, 1, 32, 32, 32)),
        (2, {"depth": 4, "mult_chan": 8}, (3, 1, 64, 48)),
        (3, {"depth": 2, "mult_chan": 4, "in_channels": 2, "projection": 3}, (1, 2, 8, 16, 16)),
        (2, {"depth": 1, "mult_chan": 4, "out_channels": 3}, (2, 1, 16, 16)),
    ],
)
def test_lean_module_equals_the_original_to_float32_rounding(ndim, kwargs, shape):
    model = random_model(ndim=ndim, seed=7, **kwargs)
    lean = lean_fnet(model.module)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = model.module(x), lean(x)
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 2e-6 * max(scale, 1.0)
    # no BatchNorm left: every normalization was folded into a convolution
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in lean.modules())
    # the original module is untouched (training and packages keep it)
    assert any(isinstance(m, torch.nn.BatchNorm3d | torch.nn.BatchNorm2d)
               for m in model.module.modules())  # fmt: skip


def test_prediction_runs_the_lean_module_and_refuses_training_mode():
    model = random_model(seed=1)
    placed = placed_module(ModelHandle(model), torch.device("cpu"))
    assert placed is not model.module and type(placed).__name__ == "_LeanUNet"
    with pytest.raises(ValueError, match="call net.eval"):
        lean_fnet(model.module.train())
    model.module.eval()
