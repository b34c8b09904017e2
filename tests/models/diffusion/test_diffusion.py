"""Diffusion models: the denoiser's geometry, samplers as passes, seam-free tiling, resume."""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import pytest
import torch

import zarrstain
from zarrstain import datasets
from zarrstain.engine.tiling import plan_tiles, predict_whole, run_tiled
from zarrstain.errors import ParameterError
from zarrstain.models import create_model
from zarrstain.models.nets.denoiser import Denoiser, denoiser_receptive_radius


def _jitter(model, scale=0.05, seed=0):
    """Random values in the zero-initialised layers too, so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _model(ndim=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    model = create_model(
        "diffusion", input_labels=["BF"], output_labels=["DNA (predicted)"],
        normalization="zscore", ndim=ndim, **{"width": 8, "mults": [1, 2], **kwargs},
    )  # fmt: skip
    return _jitter(model, seed=seed)


def _data(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(("levels", "blocks"), [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_receptive_radius_is_the_reach_of_one_voxel(levels, blocks):
    torch.manual_seed(1)
    net = Denoiser(2, 1, 1, width=4, mults=[1] * levels, blocks=blocks).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    radius, reach = denoiser_receptive_radius(levels, blocks), 0
    rows = 2 ** (levels - 1) * 2
    for offset in range(2 ** (levels - 1)):  # the field depends on the position mod divisor
        x = torch.randn(1, 2, rows, 256, dtype=torch.float64)
        c = 128 + offset
        moved = x.clone()
        moved[..., c] += 1
        t = torch.tensor([7])
        changed = torch.nonzero((net(moved, t) - net(x, t)).abs().amax((0, 1, 2)) > 0).flatten()
        reach = max(reach, c - int(changed.min()), int(changed.max()) - c)
    assert reach == radius


@pytest.mark.parametrize(
    ("ndim", "shape", "options", "chunkings"),
    [
        (2, (1, 1, 2, 90, 100), {"sampler": "ddpm", "steps": 4, "samples": 2},
         [{"y": 32, "x": 32}, {"y": 48, "x": 28}, {"y": 28, "x": 64}]),
        (3, (1, 1, 8, 64, 60), {"sampler": "ddim", "steps": 3, "eta": 0.5},
         [{"y": 28, "x": 28}, {"z": 4, "y": 32, "x": 60}, {"y": 64, "x": 28}]),
    ],
)  # fmt: skip
def test_tiled_sampling_equals_whole_field_sampling(ndim, shape, options, chunkings):
    model = _model(ndim).with_options(**options)
    assert model.geometry.local and model.geometry.passes == options["steps"]
    data = _data(shape)
    whole = predict_whole(data, model, seed=3)
    span = float(whole.max() - whole.min())
    for chunks in chunkings:
        plan = plan_tiles((shape[0], *shape[2:]), model, halo="exact", chunks=chunks)
        assert plan.n_blocks > 1 and plan.exact
        tiled = run_tiled(da.from_array(data), model, plan, seed=3).compute()
        assert np.abs(tiled - whole).max() <= 1e-5 * span
    # the seed decides the sample; the same seed the same one
    assert np.array_equal(predict_whole(data, model, seed=3), whole)
    assert np.abs(predict_whole(data, model, seed=4) - whole).max() > 0.1 * span


def test_samples_give_mean_std_and_kept_samples():
    model = _model().with_options(steps=2, samples=3, keep_samples=True)
    assert model.output_labels == (
        "DNA (predicted)", "DNA (predicted) std", "DNA (predicted) sample 0",
        "DNA (predicted) sample 1", "DNA (predicted) sample 2",
    )  # fmt: skip
    out = predict_whole(_data((1, 1, 1, 32, 32)), model, seed=0)[0, :, 0]
    samples = out[2:]
    np.testing.assert_allclose(out[0], samples.mean(0), atol=1e-5)
    np.testing.assert_allclose(out[1], samples.std(0, ddof=1), atol=1e-5)
    assert np.abs(samples[0] - samples[1]).max() > 0  # each sample its own noise
    # one sample: just the value
    assert _model().with_options(samples=1).output_labels == ("DNA (predicted)",)


def test_renaming_and_options_relabel_by_one_rule():
    """A renamed model keeps its name and target intensity when options add channels."""
    from zarrstain.models import relabel

    model = dataclasses.replace(_model(), output_intensity=((100.0, 10.0),))
    renamed = relabel(model, "Nuclei").with_options(samples=2)
    assert renamed.output_labels == ("Nuclei", "Nuclei std")
    assert renamed.output_intensity == ((100.0, 10.0), (100.0, 10.0))
    assert renamed.targets == ("Nuclei",)
    back = renamed.with_options(samples=1)  # the std channel goes, the name stays
    assert back.output_labels == ("Nuclei",) and back.output_intensity == ((100.0, 10.0),)


def test_run_options_are_checked():
    model = _model()
    for bad, match in [
        ({"sampler": "euler"}, "sampler must be one of ddim, ddpm"),
        ({"steps": 0}, "steps must be a number ≥ 1"),
        ({"steps": 5000}, "more than the model's 1000 diffusion steps"),
        ({"samples": 1.5}, "samples must be"),
        ({"class_label": "treated"}, "trained without classes"),
        ({"guidance_scale": 1.0}, "needs a classifier"),
        ({"colour": 1}, "take no run option colour"),
    ]:
        with pytest.raises(ParameterError, match=match):
            model.with_options(**bad)
    fnet = create_model("fnet", input_labels=["BF"], output_labels=["DNA"], ndim=2, depth=1)
    with pytest.raises(ParameterError, match="takes no run options, so steps"):
        fnet.with_options(steps=3)


def test_class_conditional_models_need_a_known_class():
    model = _model(class_names=["control", "treated"])
    with pytest.raises(ParameterError, match="no null class; give each scene's class"):
        model.with_options()
    with pytest.raises(ParameterError, match="'mock' is not one the model knows"):
        model.with_options(class_label="mock")
    with pytest.raises(ParameterError, match="needs a model trained with a null class"):
        model.with_options(class_label="treated", cfg_scale=2.0)
    data = _data((1, 1, 1, 32, 32))
    a = predict_whole(data, model.with_options(class_label="control", steps=2), seed=0)
    b = predict_whole(data, model.with_options(class_label="treated", steps=2), seed=0)
    assert np.abs(a - b).max() > 1e-3  # the class embedding enters every block
    null = _model(class_names=["control", "treated"], null_class=True)
    assert null.with_options().options["class_index"] == 2  # the null class
    guided = null.with_options(class_label="treated", cfg_scale=1.5, steps=2)
    plain = null.with_options(class_label="treated", steps=2)
    assert np.abs(predict_whole(data, guided) - predict_whole(data, plain)).max() > 1e-4


def test_non_local_denoisers_run_whole_fields_and_refuse_exact_tiling():
    model = _model(norm="group").with_options(steps=2)
    assert not model.geometry.local
    with pytest.raises(ParameterError, match="is not local.*integer halo"):
        plan_tiles((1, 1, 64, 64), model, halo="exact", chunks={"y": 32})
    plan = plan_tiles((1, 2, 64, 64), model, halo="exact")
    assert plan.n_blocks == 1 and plan.exact
    attention = _model(attention="global").with_options(steps=2)
    assert not attention.geometry.local
    approx = plan_tiles((1, 1, 64, 64), attention, halo=8, chunks={"y": 32, "x": 32})
    assert not approx.exact and approx.halo_mode == "fixed"


def test_predict_samples_a_scene_and_records_the_sampler(tmp_path):
    store = datasets.make_image(tmp_path / "in.zarr", shape=(1, 2, 64, 64), seed=1)
    scene = zarrstain.open_image(store)
    model = _model()
    options = {"steps": 3, "sampler": "ddim", "samples": 2}
    kwargs = {"options": options, "seed": 5}
    tiled = zarrstain.predict(scene, model, halo="exact", chunks={"y": 32, "x": 32}, **kwargs)
    whole = zarrstain.predict(scene, model, halo="exact", **kwargs)
    assert list(tiled.coords["c"].values) == ["DNA (predicted)", "DNA (predicted) std"]
    a, b = tiled.values, whole.values
    assert np.abs(a - b).max() <= 1e-5 * float(b.max() - b.min())
    record = tiled.attrs["zarrstain"]
    assert record["seed"] == 5 and record["sampling"]["steps"] == 3
    assert record["sampling"]["samples"] == 2 and record["tiling"]["passes"] == 3
    other = zarrstain.predict(scene, model, halo="exact", **{**kwargs, "seed": 6})
    assert other.attrs["zarrstain"]["fingerprint"] != record["fingerprint"]
    more = zarrstain.predict(scene, model, halo="exact", options={**options, "steps": 4}, seed=5)
    assert more.attrs["zarrstain"]["fingerprint"] != record["fingerprint"]


def test_interrupted_sampling_resumes_from_the_last_stored_step(tmp_path, monkeypatch):
    model = _model().with_options(steps=6, sampler="ddpm", scratch_every=2)
    data = _data((1, 1, 2, 64, 64), seed=2)
    plan = plan_tiles((1, 2, 64, 64), model, halo="exact", chunks={"y": 32, "x": 32})
    whole = run_tiled(da.from_array(data), model, plan, seed=1).compute()
    spec = type(model.spec)
    original, calls = spec.run, []

    def crashing(self, module, x, context):
        calls.append(context.step)
        if context.step == 4 and crash:
            raise RuntimeError("simulated crash")
        return original(self, module, x, context)

    monkeypatch.setattr(spec, "run", crashing)
    scratch = tmp_path / "scratch.zarr"
    crash = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_tiled(da.from_array(data), model, plan, seed=1, scratch=scratch).compute()
    assert sorted(p.name for p in scratch.iterdir() if p.name.startswith("pass")) == ["pass-3"]
    crash, calls[:] = False, []
    resumed = run_tiled(da.from_array(data), model, plan, seed=1, scratch=scratch).compute()
    assert min(calls) == 4  # steps 0-3 came from the scratch store
    np.testing.assert_array_equal(resumed, whole)


def _classifier(seed=0):
    torch.manual_seed(seed)
    model = create_model(
        "classifier", input_labels=["DNA"], output_labels=["p(a)", "p(b)"],
        class_names=["a", "b"], width=8, blocks=2,
    )  # fmt: skip
    return _jitter(model, 0.1, seed)


def test_classifier_guidance_steers_samples_and_tiles_exactly():
    diffusion, classifier = _model(), _classifier()
    data = _data((1, 1, 1, 96, 96))
    plain = diffusion.with_options(steps=8, sampler="ddpm")

    def guided(s, **kw):
        kw = {"steps": 8, "sampler": "ddpm", **kw}
        return diffusion.with_options(guidance=classifier, guidance_scale=s, class_label="b", **kw)

    # s = 0 is unguided sampling, bit for bit (also its halo)
    assert np.array_equal(
        predict_whole(data, guided(0.0), seed=1), predict_whole(data, plain, seed=1)
    )
    assert guided(0.0).geometry.radii == plain.geometry.radii

    def mean_log_p(x0):  # the classifier's mean log p(b | x0) at step 0
        with torch.no_grad():
            logits = classifier.module(torch.from_numpy(x0[:, :, 0]), torch.zeros(1, dtype=int))
        return float(torch.log_softmax(logits, 1)[:, 1].mean())

    scores = [mean_log_p(predict_whole(data, guided(s), seed=1)) for s in (0.0, 1.0, 10.0)]
    assert scores[0] < scores[1] < scores[2]
    # the gradient reaches twice the classifier's radius; tiled with that halo it is exact
    model = guided(10.0, **{"sampler": "ddim", "steps": 3})
    whole = predict_whole(data, model, seed=1)
    plan = plan_tiles((1, 1, 96, 96), model, halo="exact", chunks={"y": 32, "x": 32})
    assert plan.n_blocks == 9
    tiled = run_tiled(da.from_array(data), model, plan, seed=1).compute()
    assert np.abs(tiled - whole).max() <= 1e-5 * float(whole.max() - whole.min())


def test_guidance_needs_a_matching_classifier():
    diffusion, classifier = _model(), _classifier()
    with pytest.raises(ParameterError, match="steers towards a class; give one of a, b"):
        diffusion.with_options(guidance=classifier, guidance_scale=1.0)
    with pytest.raises(ParameterError, match="must be a classifier"):
        diffusion.with_options(guidance=_model(), guidance_scale=1.0, class_label="a")
    wide = create_model("classifier", input_labels=["a", "b"], output_labels=["p"] * 2,
                        class_names=["a", "b"])  # fmt: skip
    with pytest.raises(ParameterError, match="reads 2 channel"):
        diffusion.with_options(guidance=wide, guidance_scale=1.0, class_label="a")
