"""Output heads (zarrstain.models.heads): what each writes, how it trains, how it is stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zarrstain
from zarrstain.errors import ParameterError
from zarrstain.models import create_model
from zarrstain.models.heads import (
    BinsHead,
    Calibration,
    QuantileHead,
    ValueHead,
    head_from_kwargs,
    make_head,
)


def _discrete(p, centers, q):
    """The q-quantile of a binned distribution, interpolated inside the bin (the reference)."""
    cdf = np.cumsum(p)
    k = min(int(np.sum(cdf < q)), len(p) - 1)
    below = cdf[k - 1] if k else 0.0
    width = centers[1] - centers[0]
    return centers[0] - width / 2 + (k + (q - below) / p[k]) * width


def test_bins_head_turns_each_voxel_distribution_into_its_statistics():
    head = BinsHead(bins=5, range=(0.0, 5.0), extras=("mode", "median"), interval=True, alpha=0.2)
    labels = [h.label("DNA") for h in head.outputs]
    assert labels == [
        "DNA (predicted)",
        "DNA (predicted) std",
        "DNA (predicted) mode",
        "DNA (predicted) median",
        "DNA (predicted) lower",
        "DNA (predicted) upper",
    ]
    logits = torch.randn(3, 2 * 5, 4, 6, generator=torch.Generator().manual_seed(0))
    out = head.reduce(logits).numpy()
    assert out.shape == (3, 2 * 6, 4, 6)
    centers = np.arange(5) + 0.5
    for target in range(2):
        p = torch.softmax(logits[:, target * 5 : (target + 1) * 5], 1).numpy()
        got = out[:, target * 6 : (target + 1) * 6]
        mean = np.einsum("nk...,k->n...", p, centers)
        std = np.sqrt(
            np.einsum("nk...,nk...->n...", p, (centers[None, :, None, None] - mean[:, None]) ** 2)
        )
        np.testing.assert_allclose(got[:, 0], mean, rtol=1e-5)
        np.testing.assert_allclose(got[:, 1], std, rtol=1e-4)
        np.testing.assert_array_equal(got[:, 2], centers[p.argmax(1)])
        for n, y, x in [(0, 0, 0), (1, 2, 3), (2, 3, 5)]:
            voxel = p[n, :, y, x]
            for channel, q in ((3, 0.5), (4, 0.1), (5, 0.9)):
                assert got[n, channel, y, x] == pytest.approx(
                    _discrete(voxel, centers, q), abs=1e-5
                )


def test_bins_loss_is_cross_entropy_on_the_binned_target():
    head = BinsHead(bins=4, range=(-1.0, 1.0))
    target = torch.tensor([-3.0, -0.9, 0.1, 0.99, 5.0]).reshape(5, 1, 1, 1)
    assert head.bin_index(target).flatten().tolist() == [0, 0, 2, 3, 3]  # outside: edge bins
    logits = torch.zeros(5, 4, 1, 1)
    logits[:, 2] = 10.0  # confident in bin 2
    loss = head.loss(logits, target)
    expected = np.mean([10.0, 10.0, 0.0, 10.0, 10.0])  # ≈ 10 nats off, except the hit
    assert float(loss) == pytest.approx(expected, abs=1e-3)


def test_quantile_heads_never_cross_and_learn_their_quantiles():
    head = QuantileHead(alpha=0.2)
    raw = torch.randn(8, 3, 5, 5) * 3
    median, lower, upper = head.reduce(raw).unbind(1)
    assert (lower <= median).all() and (median <= upper).all()
    # fit one voxel's three raw values to samples of N(1, 2): the pinball loss finds the quantiles
    samples = torch.distributions.Normal(1.0, 2.0).sample((4096, 1, 1, 1))
    params = torch.zeros(1, 3, 1, 1, requires_grad=True)
    optimizer = torch.optim.Adam([params], lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        head.loss(params.expand(len(samples), 3, 1, 1), samples).backward()
        optimizer.step()
    median, lower, upper = head.reduce(params.detach()).flatten().tolist()
    truth = np.quantile(samples.numpy(), [0.5, 0.1, 0.9])
    np.testing.assert_allclose([median, lower, upper], truth, atol=0.1)


def test_masked_targets_are_left_out_of_every_loss():
    target = torch.randn(4, 2, 3, 3)
    mask = torch.tensor([[True, False], [True, True], [False, True], [True, False]])
    for head in (ValueHead(), BinsHead(bins=4), QuantileHead()):
        raw = torch.randn(4, 2 * head.raw_channels, 3, 3)
        wild = target.clone()
        wild[~mask] = 1e6  # what a missing target holds must not matter
        assert torch.allclose(head.loss(raw, target, mask), head.loss(raw, wild, mask))


@pytest.mark.parametrize("method", ["cqr", "rcps"])
def test_calibration_moves_the_interval_around_the_median(method):
    cal = Calibration(method, alpha=0.1, adjustment=(0.5, 2.0))
    median, lower, upper = torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.5])
    lo, hi = cal.apply(median, lower, upper, 0)
    if method == "cqr":  # out by q
        assert (float(lo), float(hi)) == (-0.5, 2.0)
    else:  # distances to the median scaled by λ
        assert (float(lo), float(hi)) == (0.5, 1.25)
    lo, hi = Calibration("cqr", 0.1, (-3.0,)).apply(median, lower, upper, 0)
    assert float(lo) == float(hi) == 1.0  # a negative margin narrows, never past the median


def test_heads_round_trip_through_card_kwargs():
    for head in (
        BinsHead(bins=16, range=(-2.5, 3.0), extras=("mode",)),
        QuantileHead(alpha=0.05, calibration=Calibration("rcps", 0.05, (1.3,), delta=0.1)),
    ):
        kwargs = {"head": head.to_kwargs()}
        assert head_from_kwargs(kwargs) == head
    assert ValueHead().to_kwargs() is None and head_from_kwargs({}) == ValueHead()


@pytest.mark.parametrize(
    ("kind", "options", "fragment"),
    [
        ("gaussian", {}, "head 'gaussian' is not one of value, bins, quantiles"),
        ("quantiles", {"alpha": 1.5}, "alpha=1.5 is not in (0, 1)"),
        ("quantiles", {"alpha": 0}, "alpha=0 is not in (0, 1)"),
        ("bins", {"bins": 1}, "bins=1 must be at least 2"),
        ("bins", {"range": (2, 1)}, "is empty; it needs low < high"),
        ("bins", {"extras": ("mean",)}, "bins output 'mean' is not one of mode, median"),
        ("value", {"bins": 4}, "head 'value' takes no option bins"),
    ],
)
def test_bad_heads_say_what_would_work(kind, options, fragment):
    with pytest.raises(ParameterError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        make_head(kind, **options)


def test_head_channels_denormalize_by_kind():
    model = create_model(
        "fnet",
        input_labels=["BF"],
        output_labels=["DNA (predicted)", "DNA (predicted) std"],
        normalization="zscore",
        output_intensity=[(100.0, 10.0)] * 2,
        ndim=3,
        depth=1,
        mult_chan=2,
        head={"kind": "bins", "bins": 4, "range": [-1, 1]},
    )
    assert [h.kind for h in model.outputs] == ["value", "std"]
    data = np.random.default_rng(0).standard_normal((1, 1, 4, 8, 8)).astype(np.float32)
    raw = model.forward(torch.from_numpy(data)).numpy()
    pred = zarrstain.predict(data, model, normalize=None, halo="exact").values
    np.testing.assert_allclose(pred[:, 0], raw[:, 0] * 10 + 100, rtol=1e-5)  # value: offset + scale
    np.testing.assert_allclose(pred[:, 1], raw[:, 1] * 10, rtol=1e-5)  # std: scale only


def test_output_label_renames_a_head_and_its_channels(tmp_path):
    from zarrstain.errors import ModelError
    from zarrstain.testing import random_model

    model = random_model(head={"kind": "quantiles"})
    folder = zarrstain.save_model(model, tmp_path / "q")
    renamed = zarrstain.load_model(folder, output_label="Nuclei")
    assert renamed.output_labels == ("Nuclei", "Nuclei lower", "Nuclei upper")
    two = random_model(output_labels=("DNA (predicted)", "Mem (predicted)"))
    with pytest.raises(ModelError, match="renames only models of one target"):
        zarrstain.load_model(zarrstain.save_model(two, tmp_path / "two"), output_label="x")
