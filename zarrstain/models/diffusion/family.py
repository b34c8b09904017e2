"""Image-to-image diffusion as an architecture plug-in: a sampler run as one pass per step.

A diffusion model predicts target channels (fluorescence) by sampling, conditioned on the input
channels (brightfield) and optionally on a class label (the well's treatment). The engine runs
each sampling step as one ``map_overlap`` pass over the state: pass *i* reads the condition and
the K samples' current state x_{t_i}, runs the :class:`~zarrstain.models.nets.denoiser.Denoiser`,
and returns the condition with x_{t_{i+1}}; the last pass returns the clean samples, which
:class:`SamplesHead` reduces to their mean and standard deviation per voxel.

Exactness: the denoiser is local (by default), each pass's halo is its receptive radius, the
step is arithmetic per voxel, and every random number (the initial noise, each step's noise) is
a function of (seed, sample, step, channel, global voxel index) (:mod:`zarrstain.noise`). So
each pass of a tiled run equals the same pass over the whole field, and so does the result.

Model card keys (``kwargs``) beside the denoiser's: ``schedule`` (linear/cosine),
``timesteps`` (T), ``beta_start``/``beta_end``, ``zero_snr``, ``objective`` (epsilon/v),
``class_names`` (labels of the class embedding), ``null_class`` (trained with label dropout:
classifier-free guidance), ``class_dropout``, and the default ``sampler`` and ``sample_steps``.
Run options (:meth:`DiffusionArchitecture.configure`, set by ``predict``): ``sampler``,
``steps``, ``eta``, ``samples``, ``keep_samples``, ``class_label``, ``cfg_scale``,
``guidance`` / ``guidance_scale`` (a noise-conditioned classifier, see
:mod:`zarrstain.models.diffusion.classifier`) and ``scratch_every``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from zarrstain import noise
from zarrstain.classes import scene_class
from zarrstain.errors import ParameterError, option
from zarrstain.models.architecture import Architecture, BlockContext, Geometry
from zarrstain.models.diffusion.chains import CHAINS, SamplesHead, drive
from zarrstain.models.diffusion.classifier import check_guidance, guidance_gradient
from zarrstain.models.diffusion.options import RUN_SCHEMA, SAMPLERS
from zarrstain.models.diffusion.samplers import STEPS, Step
from zarrstain.models.diffusion.schedules import (
    OBJECTIVES,
    SCHEDULES,
    Schedule,
    schedule_of,
    timesteps,
)
from zarrstain.models.heads import OutputHead, _masked_mean
from zarrstain.models.nets.denoiser import ATTENTION, NORMS, Denoiser, denoiser_receptive_radius

__all__ = ["SAMPLERS", "DiffusionArchitecture", "SamplesHead", "schedule_of"]

logger = logging.getLogger(__name__)

#: random-number purposes: the initial noise, and the noise each stochastic step adds
_INIT, _STEP = 1, 2
_MODULE_KEYS = ("ndim", "in_channels", "out_channels", "width", "mults", "blocks", "norm",
                "attention")  # fmt: skip
#: options the user sets (the rest of a configured dict is derived from them and the card):
#: the run schema's, less the class sources that scene_options turns into ``class_label``
USER_OPTIONS = tuple(o.name for o in RUN_SCHEMA if not o.scene)


def _number(name: str, value: Any, kind: type, low: float, flag: str) -> Any:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.number)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok or value < low:
        raise ParameterError(f"{option(name, flag)} must be a number ≥ {low}, not {value!r}")
    return kind(value)


class DiffusionArchitecture(Architecture):
    """Conditional image-to-image diffusion (``diffusion``; ``diffusion2d`` / ``diffusion3d``).

    Local unless ``norm="group"`` or ``attention="global"`` (the published ADM layout).
    """

    name = "diffusion"
    aliases = {"diffusion2d": {"ndim": 2}, "diffusion3d": {"ndim": 3}}  # noqa: RUF012
    stochastic = True
    loss_name = "MSE (diffusion objective)"
    default_ema = 0.999
    conditional = "optional"
    #: guided-I2I's optimisation (Cross-Zamirski et al.): batch 2, Adam at 8e-5
    # guided-I2I's config/Target2.json: Adam lr 8e-5 without weight decay, batch 2, an EMA of
    # decay 0.9999 updated every step; ~250k steps (the paper's)
    paper_recipe = {  # noqa: RUF012 - read only
        "batch_size": 2,
        "lr": 8e-5,
        "weight_decay": 0.0,
        "ema": 0.9999,
        "steps": 250_000,
    }

    def scene_options(self, options: Mapping[str, Any], scene: Any) -> dict[str, Any]:
        """The scene's class, from ``class_label`` (every scene), or ``classes`` / ``class_key``
        (:func:`zarrstain.classes.scene_class`: a table, a mapping or a group attribute)."""
        out = dict(options)
        classes, key = out.pop("classes", None), out.pop("class_key", None)
        if out.get("class_label") is None and (classes is not None or key is not None):
            out["class_label"] = scene_class(classes, scene, key)
        return out

    def fix_options(
        self, kwargs: dict[str, Any], options: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The sampler and steps as the card's defaults (an interval's width depends on them)."""
        o = self._configure(kwargs, options)
        fixed = {**kwargs, "sampler": o["sampler"], "sample_steps": int(o["steps"])}
        return fixed, {"sampler": o["sampler"], "steps": int(o["steps"])}

    def stored_every(self, config: dict[str, Any]) -> int:
        return int(self._options(config).get("scratch_every", 1))

    def build(self, **kwargs: Any) -> nn.Module:
        classes = len(kwargs.get("class_names") or ())
        module_kwargs = {k: v for k, v in kwargs.items() if k in _MODULE_KEYS}
        if "mults" in module_kwargs:
            module_kwargs["mults"] = tuple(module_kwargs["mults"])
        return Denoiser(**module_kwargs, classes=classes, null_class=bool(kwargs.get("null_class")))

    def channels(self, kwargs: dict[str, Any], n_inputs: int, n_outputs: int) -> dict[str, Any]:
        if kwargs.get("head"):
            raise ParameterError(
                "diffusion models write their samples' mean and std (samples=K), not an "
                f"output head's channels; drop the head ({kwargs['head']!r})"
            )
        for key, allowed in (("norm", NORMS), ("attention", ATTENTION), ("schedule", SCHEDULES),
                             ("objective", OBJECTIVES[:2]), ("sampler", SAMPLERS)):  # fmt: skip
            if key in kwargs and kwargs[key] not in allowed:
                raise ParameterError(
                    f"diffusion {key} {kwargs[key]!r} is not one of {', '.join(allowed)}"
                )
        defaults = {"ndim": 2, "width": 32, "mults": [1, 2, 2], "blocks": 1, "norm": "pixel",
                    "attention": "none", "schedule": "linear", "timesteps": 1000,
                    "beta_start": 1e-4, "beta_end": 2e-2, "zero_snr": False,
                    "objective": "epsilon", "sampler": "ddim", "sample_steps": 50}  # fmt: skip
        out = {**defaults, "in_channels": n_inputs, "out_channels": n_outputs, **kwargs}
        if out.get("backbone") and out["in_channels"]:
            raise ParameterError("a diffusion backbone reads no input channels (in_channels=0)")
        out["mults"] = [int(m) for m in out["mults"]]
        schedule_of(out)  # a bad schedule fails when the model is made
        return out

    def _options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        # the defaults (geometry and heads do not depend on the class, which may be missing)
        return dict(kwargs["options"]) if "options" in kwargs else self._configure(kwargs, {})

    def geometry(self, kwargs: dict[str, Any]) -> Geometry:
        ndim = int(kwargs.get("ndim", 2))
        levels = len(kwargs.get("mults", (1, 2, 2)))
        radius = denoiser_receptive_radius(levels, int(kwargs.get("blocks", 1)))
        local = kwargs.get("norm", "pixel") == "pixel" and kwargs.get("attention") in (
            None,
            "none",
        )
        o = self._options(kwargs)
        guide = o.get("guidance") if o.get("guidance_scale") else None
        if guide is not None:  # the classifier's gradient reaches twice its radius
            radius = max(radius, 2 * max(guide.receptive_radius))
            local = local and guide.geometry.local
        steps = int(o["steps"])
        return Geometry(ndim, 2 ** (levels - 1), ((radius,) * ndim,) * steps, local=local)

    def output_head(self, kwargs: dict[str, Any]) -> OutputHead:
        o = self._options(kwargs)
        return SamplesHead(samples=int(o["samples"]), keep=bool(o["keep_samples"]))

    def pass_channels(self, kwargs: dict[str, Any], step: int, n_in: int, n_out: int) -> int:
        """The condition, then every sample's state."""
        return n_in + _states(self._options(kwargs)) * int(kwargs["out_channels"])

    def bytes_per_voxel(self, kwargs: dict[str, Any]) -> int:
        """The denoiser's feature maps, per sample (twice with classifier-free guidance).

        About 32 bytes per channel of the first level's width, plus fixed costs: measured
        peak RSS increase of one CPU forward of a 1024² plane, multipliers 1-2-2: width 8,
        16, 32 → 316, 564, 1080 B/voxel (more on small planes, where fixed costs weigh).
        """
        o = self._options(kwargs)
        batch = _states(o) * (2 if o["cfg_scale"] else 1)
        return (32 * int(kwargs.get("width", 32)) + 200) * batch

    def configure(self, kwargs: dict[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
        """Sampler settings, checked; defaults from the card (sampler, sample_steps).

        Raises
        ------
        ParameterError
            An unknown option or sampler, steps outside 1..T, a class the model does not
            know (or none for a class-conditional model without a null class),
            classifier-free guidance without a null class.
        """
        return self._configure(kwargs, options, check_class=True)

    def _configure(
        self, kwargs: Mapping[str, Any], options: Mapping[str, Any], check_class: bool = False
    ) -> dict[str, Any]:
        given = {k: v for k, v in options.items() if v is not None and k in USER_OPTIONS}
        unknown = sorted(set(options) - set(USER_OPTIONS) - set(_DERIVED))
        if unknown:
            raise ParameterError(
                f"diffusion models take no run option {', '.join(unknown)}; they take "
                + ", ".join(USER_OPTIONS)
            )
        sampler = given.get("sampler", kwargs.get("sampler", "ddim"))
        if sampler not in SAMPLERS:
            raise ParameterError(
                f"{option('sampler', '--sampler')} must be one of {', '.join(SAMPLERS)}, "
                f"not {sampler!r}"
            )
        total = int(kwargs.get("timesteps", 1000))
        steps = _number("steps", given.get("steps", kwargs.get("sample_steps", 50)), int, 1,
                        "--steps")  # fmt: skip
        if steps > total:
            raise ParameterError(
                f"{option('steps', '--steps')} {steps} is more than the model's {total} "
                "diffusion steps"
            )
        out = {
            "sampler": sampler,
            "steps": steps,
            "eta": _number("eta", given.get("eta", 0.0), float, 0, "--eta"),
            "samples": _number("samples", given.get("samples", 1), int, 1, "--samples"),
            "keep_samples": bool(given.get("keep_samples", False)),
            "cfg_scale": _number("cfg_scale", given.get("cfg_scale", 0.0), float, 0, "--cfg-scale"),
            "scratch_every": _number(
                "scratch_every", given.get("scratch_every", 5), int, 1, "--scratch-every"
            ),
            "guidance_scale": _number(
                "guidance_scale", given.get("guidance_scale", 0.0), float, 0, "--guidance-scale"
            ),
            "guidance": given.get("guidance"),
        }
        # a quantile-head model samples three chains (median, lower, upper) of one sample
        out["chains"] = CHAINS if (kwargs.get("head") or {}).get("kind") == "quantiles" else 1
        if out["chains"] > 1 and out["samples"] > 1:
            raise ParameterError(
                f"a model with quantile heads samples three chains of one sample, not "
                f"{out['samples']}; drop {option('samples=', '--samples')} (or use a model "
                "without quantile heads for a sample ensemble)"
            )
        calibrated = ((kwargs.get("head") or {}).get("calibration") or {}).get("sampling")
        if check_class and calibrated and calibrated != {"sampler": sampler, "steps": steps}:
            logger.warning(
                "this model's intervals were calibrated with %s; sampling with %s %d steps "
                "gives intervals of another width (recalibrate at these settings)",
                calibrated, sampler, steps,
            )  # fmt: skip
        if check_class:
            out.update(
                _class_options(
                    kwargs, given.get("class_label"), out["cfg_scale"], out["guidance"] is not None
                )
            )
        # the class guidance steers towards: its own, or the scene's (derived, so that the
        # next scene's class is not replaced by this one's)
        out["guidance_class"] = given.get("guidance_class")
        out["guidance_target"] = out["guidance_class"] or given.get("class_label")
        if out["guidance"] is not None and check_class:
            check_guidance(out["guidance"], kwargs, out["guidance_target"])
        elif out["guidance_scale"]:
            raise ParameterError(
                f"{option('guidance_scale', '--guidance-scale')} needs a classifier: give "
                + option("guidance=MODEL", "--guidance-model PATH")
            )
        sched = {k: kwargs.get(k) for k in ("schedule", "timesteps", "beta_start", "beta_end",
                                            "zero_snr")}  # fmt: skip
        out.update(schedule=sched, objective=kwargs.get("objective", "epsilon"),
                   targets=int(kwargs.get("out_channels", 1)))  # fmt: skip
        return out

    def run(self, module: nn.Module, x: torch.Tensor, context: BlockContext) -> torch.Tensor:
        """One sampling step over a block: (condition[, state]) → (condition, next state)."""
        o = context.options
        if not o:
            raise ParameterError(
                "a diffusion model needs its run options; predict sets them, or use "
                "model.with_options(...)"
            )
        k, n_targets = _states(o), int(o["targets"])
        schedule, ts = (
            schedule_of(o["schedule"]),
            timesteps(int(o["schedule"]["timesteps"]), int(o["steps"])),
        )
        n_cond = x.shape[1] - (k * n_targets if context.step else 0)
        cond = x[:, :n_cond]
        if context.step == 0:
            state = _noise(context, o, n_targets, x.shape[2:], ("init", 0))
        else:
            state = x[:, n_cond:]
        t = ts[context.step]
        prev = ts[context.step + 1] if context.step + 1 < len(ts) else -1
        flat = _per_sample(state, k)  # (N·K, targets, …)
        cond_k = cond.repeat_interleave(k, dim=0)
        x0, eps = _denoise(module, schedule, o, cond_k, flat, t, len(x))
        if o["guidance"] is not None and o["guidance_scale"]:
            grad = guidance_gradient(o, flat, t, context)
        else:
            grad = None
        step_noise = None
        stochastic = o["sampler"] == "ddpm" or o["eta"] > 0
        if stochastic and prev >= 0:
            step_noise = _per_sample(_noise(context, o, n_targets, x.shape[2:], ("step", t)), k)
        # the sampler's own step (samplers/: one module each)
        new = STEPS[o["sampler"]](Step(schedule, o, flat, x0, eps, t, prev, grad, step_noise))
        new = new.reshape(len(x), k * n_targets, *x.shape[2:])
        if prev < 0:  # the last step: the samples, for the head
            return new
        return torch.cat([cond, new], dim=1)

    def train_kwargs(self, config: Any) -> dict[str, Any]:
        """CPU-sized defaults, or Cross-Zamirski et al.'s settings with ``TrainConfig.paper``.

        Published: 64 channels, multipliers 1-2-4-8, 2 residual blocks per level with
        GroupNorm and global attention, linear β 1e-6 → 1e-2 over T = 2000, ε-prediction;
        trained with guided-I2I's batch 2 and learning rate 8e-5 (:attr:`paper_recipe`).
        """
        kwargs: dict[str, Any] = dict(CPU_DEFAULTS)
        if getattr(config, "published", False):
            kwargs.update(PUBLISHED)
        if getattr(config, "class_dropout", 0):
            kwargs.update(null_class=True, class_dropout=float(config.class_dropout))
        if getattr(config, "unconditional", False):  # a backbone: the targets alone
            kwargs.update(in_channels=0, backbone=True)
        return {**kwargs, **(config.model_kwargs or {})}

    def validation_options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validation samples with 10 deterministic DDIM steps (fast, and a fixed answer)."""
        return {"sampler": "ddim", "steps": min(10, int(kwargs.get("timesteps", 1000)))}

    def training_step(
        self, kwargs: dict[str, Any], module: nn.Module, batch: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """The objective's MSE at a uniformly drawn step, on noised targets.

        ``batch`` = (condition, targets, mask[, class indices]); with ``null_class`` each
        patch's class is dropped to the null class with probability ``class_dropout``
        (classifier-free guidance's label dropout, default 0.1).
        """
        cond, y, mask = batch[:3]
        cond = cond[:, : int(kwargs.get("in_channels", cond.shape[1]))]  # none for a backbone
        classes = batch[3] if len(batch) > 3 else None
        schedule = schedule_of(kwargs)
        n = len(y)
        t = torch.randint(0, schedule.steps, (n,), device=y.device)
        eps = torch.randn_like(y)
        ab = schedule.alpha_bar.to(y.device, torch.float32)[t].view(n, *(1,) * (y.dim() - 1))
        x_t = ab.sqrt() * y + (1 - ab).sqrt() * eps
        objective = kwargs.get("objective", "epsilon")
        target = eps if objective == "epsilon" else ab.sqrt() * eps - (1 - ab).sqrt() * y
        if classes is not None and kwargs.get("null_class"):
            drop = torch.rand(n, device=y.device) < float(kwargs.get("class_dropout", 0.1))
            classes = torch.where(drop, len(kwargs.get("class_names") or ()), classes)
        if not kwargs.get("class_names"):
            classes = None
        pred = module(torch.cat([cond, x_t], 1), t, classes)
        return self.objective_loss(kwargs, pred, target, mask)

    def objective_loss(
        self, kwargs: dict[str, Any], pred: torch.Tensor, target: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        """The training loss of the denoiser's prediction of its objective (MSE)."""
        return _masked_mean((pred - target) ** 2, mask)


#: what ``zarrstain train --model diffusion2d`` builds by default: small enough for a CPU
CPU_DEFAULTS = {
    "width": 16,
    "mults": [1, 2, 2],
    "blocks": 1,
    "objective": "epsilon",
    "schedule": "linear",
    "timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 2e-2,
}
#: Cross-Zamirski et al.'s network (``--paper``): the ADM layout with GroupNorm and global
#: attention, so not local (one whole field per block)
PUBLISHED = {"width": 64, "mults": [1, 2, 4, 8], "blocks": 2, "timesteps": 2000,
             "beta_start": 1e-6, "beta_end": 1e-2, "norm": "group",
             "attention": "global"}  # fmt: skip

#: keys :meth:`DiffusionArchitecture.configure` derives (accepted back, recomputed)
_DERIVED = ("class_index", "schedule", "objective", "targets", "guidance_target", "chains")


def _class_options(
    kwargs: Mapping[str, Any], label: Any, cfg: float, guided: bool = False
) -> dict[str, Any]:
    """The class index of ``label`` for this model (or its null class), checked.

    A model without classes takes a label only for classifier guidance (``guided``).
    """
    names = [str(c) for c in kwargs.get("class_names") or ()]
    null = bool(kwargs.get("null_class"))
    flag = option("class_label=", "--class / --class-map")
    if not names:
        if label is not None and guided:
            return {"class_label": str(label), "class_index": None}
        if label is not None:
            raise ParameterError(
                f"this diffusion model was trained without classes; drop {flag} ({label!r})"
            )
        if cfg:
            raise ParameterError("classifier-free guidance needs a class-conditional model")
        return {"class_label": None, "class_index": None}
    if label is None:
        if not null:
            raise ParameterError(
                f"this diffusion model is conditioned on a class ({', '.join(names)}) and has "
                f"no null class; give each scene's class with {flag}"
            )
        if cfg:
            raise ParameterError("classifier-free guidance needs a class; give one with " + flag)
        return {"class_label": None, "class_index": len(names)}
    if str(label) not in names:
        raise ParameterError(
            f"class {label!r} is not one the model knows: {', '.join(names)} ({flag})"
        )
    if cfg and not null:
        raise ParameterError(
            "classifier-free guidance (cfg_scale > 0) needs a model trained with a null class "
            "(train with --class-dropout)"
        )
    return {"class_label": str(label), "class_index": names.index(str(label))}


def _per_sample(state: torch.Tensor, k: int) -> torch.Tensor:
    """(N, K·targets, …) → (N·K, targets, …)."""
    n, c = state.shape[:2]
    return state.reshape(n * k, c // k, *state.shape[2:])


def _states(o: Mapping[str, Any]) -> int:
    """The states a sampler carries per voxel and target: its samples, or its chains."""
    return int(o["samples"]) * int(o.get("chains", 1))


def _noise(
    context: BlockContext,
    o: Mapping[str, Any],
    n_targets: int,
    spatial: tuple[int, ...],
    purpose: tuple,
) -> torch.Tensor:
    """(N, states·targets, …) standard normal noise of this block from global coordinates.

    Every chain of a sample gets that sample's noise (the chains differ by what drives them).
    """
    k, chains = int(o["samples"]), int(o.get("chains", 1))
    tag = _INIT if purpose[0] == "init" else _STEP
    planes = []
    for origin in context.origins:
        shape = (1, 1, *spatial) if len(spatial) == 2 else (1, *spatial)
        per = [
            noise.normal(
                noise.key(context.seed, s, purpose[1], j, tag), origin, shape, context.volume
            ).reshape(spatial)
            for s in range(k)
            for j in range(n_targets)
        ]
        planes.append(np.stack(per))
    out = torch.from_numpy(np.stack(planes)).to(context.device)
    return out.repeat(1, chains, *(1,) * len(spatial)) if chains > 1 else out


def _denoise(
    module: nn.Module,
    schedule: Schedule,
    o: Mapping[str, Any],
    cond: torch.Tensor,
    state: torch.Tensor,
    t: int,
    n_items: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) from the denoiser at step t, with classifier-free guidance when asked."""
    m = len(state)
    steps = torch.full((m,), t, device=state.device, dtype=torch.long)
    index = o["class_index"]
    classes = None if index is None else torch.full_like(steps, int(index))
    inp = torch.cat([cond, state], 1)
    pred = module(inp, steps, classes).float()
    if o["cfg_scale"]:  # ε̃ = ε_c + w (ε_c − ε_∅) (Ho & Salimans; w = 0: conditional only)
        null = torch.full_like(steps, module.classes.num_embeddings - 1)
        uncond = module(inp, steps, null).float()
        pred = pred + o["cfg_scale"] * (pred - uncond)
    if o.get("chains", 1) > 1:  # each chain's own quantile of the objective
        pred = drive(pred, int(o["chains"]))
    return schedule.to_x0_eps(o["objective"], pred, state, t)
