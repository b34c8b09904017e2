"""VisCy's UNeXt2 rebuilt in plain torch reproduces VisCy's own forward (fixture made by VisCy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from zarrstain.models.nets.unext2 import UNeXt2, unext2_config

FIXTURES = FIXTURES / "viscy"


@pytest.fixture(scope="module")
def viscy():
    """The Lightning checkpoint, its input and VisCy's output (tests/fixtures/viscy)."""
    checkpoint = torch.load(FIXTURES / "unext2.ckpt", weights_only=True, map_location="cpu")
    io = np.load(FIXTURES / "unext2_io.npz")
    return checkpoint["state_dict"], torch.from_numpy(io["input"]), io["output"]


def test_the_configuration_is_read_from_the_weights(viscy):
    state, _, _ = viscy
    config = unext2_config(state)
    # what make_fixtures.py gave VisCy: 1 → 2 channels, 5 planes, widths 8-64, 1 block each
    assert config == {
        "in_channels": 1,
        "out_channels": 2,
        "in_stack_depth": 5,
        "out_stack_depth": 5,
        "dims": [8, 16, 32, 64],
        "depths": [1, 1, 1, 1],
        "stem_kernel_size": (5, 4, 4),
        "decoder_conv_blocks": 1,
        "head_expansion_ratio": 1,
    }
    with pytest.raises(KeyError, match="encoder_stages"):
        unext2_config({"model.unet.weight": torch.zeros(1)})


def test_unext2_reproduces_viscys_forward(viscy):
    state, x, expected = viscy
    module = UNeXt2(**unext2_config(state))
    module.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    assert module.divisor == 32
    with torch.no_grad():
        out = module.eval()(x).numpy()
    assert out.shape == expected.shape == (1, 2, 5, 64, 64)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


def test_unext2_is_not_local(viscy):
    """GRN and the head's instance norm see the whole plane: one far pixel moves every output.

    Inside a block of GRN's (1×1 convolutions around it) an output depends on its own pixel
    only, unless a layer pools over the plane; here a change at one corner moves the other.
    This is why a UNeXt2 must run one whole field per block.
    """
    state, _, _ = viscy
    module = UNeXt2(**unext2_config(state)).eval()
    module.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    grn = module.encoder_stages.stages_0.blocks[0].mlp.grn
    norm = module.head.conv[0].adn
    for layer, shape in ((grn, (1, 32, 16, 16)), (norm, (1, 8, 3, 16, 16))):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
        y = x.clone()
        y[..., 0, 0] += 5.0
        with torch.no_grad():
            moved = (layer(y) - layer(x))[..., -1, -1].abs().max()
        assert moved > 1e-4, layer
