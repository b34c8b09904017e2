"""FluoGen's control branch: adapt a frozen diffusion backbone to a task from a few pairs.

A backbone (``zarrstain train --model diffusion2d --unconditional``) models fluorescence
alone. A control branch (ControlNet, Zhang et al. 2023; FluoGen) is a trainable copy of the
backbone's encoder that also reads the condition (brightfield, a noisy acquisition): the
condition enters through a zero-initialised convolution added to the copy's stem, and the
copy's features enter the backbone through zero-initialised 1×1 convolutions added to every
skip and to the middle blocks' output. At step 0 of training every zero convolution outputs 0,
so the controlled model is exactly the backbone; training moves only the branch.

The branch has the backbone's layout, so it is local when the backbone is (per-voxel norms,
no attention) and its receptive radius is the backbone's: exact tiling holds.

A control package stores the branch's weights and references the backbone by content hash
and path (``kwargs["backbone"]``); ``embed_backbone=True`` stores the backbone's weights too,
so the package stands alone. Loading checks that the referenced backbone is there and is the
one trained against.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zarrstain.errors import ModelError, ParameterError, option
from zarrstain.models.diffusion.chains import QuantileChainsHead, bounded, quantile_loss
from zarrstain.models.diffusion.family import _MODULE_KEYS, DiffusionArchitecture
from zarrstain.models.format import load_model
from zarrstain.models.heads import Calibration, OutputHead
from zarrstain.models.nets.denoiser import Denoiser, ResBlock, _conv

__all__ = ["ControlArchitecture", "ControlBranch", "ControlledDenoiser", "backbone_kwargs"]


class ControlBranch(nn.Module):
    """A copy of a backbone's stem, down path and middle blocks, plus the condition's input
    and the zero convolutions that hand its features to the backbone."""

    def __init__(
        self, backbone: Denoiser, cond_channels: int, ndim: int, norm: str, bounds: bool = False
    ) -> None:
        super().__init__()
        conv = _conv(ndim)
        self.levels = backbone.levels
        self.stem = conv(backbone.stem.in_channels, backbone.width, 3, padding=1)
        self.hint = conv(cond_channels, backbone.width, 3, padding=1)
        self.down = nn.ModuleList()
        for level in backbone.down:
            self.down.append(
                nn.ModuleList(
                    ResBlock(
                        ndim, b.conv1.in_channels, b.conv1.out_channels, b.emb.in_features, norm
                    )
                    for b in level
                )
            )
        self.downsample = nn.ModuleList(
            conv(d.in_channels, d.out_channels, 3, stride=2, padding=1) for d in backbone.downsample
        )
        width = backbone.mid[0].conv1.in_channels
        self.mid = nn.ModuleList(
            ResBlock(ndim, width, width, backbone.mid[0].emb.in_features, norm) for _ in range(2)
        )
        self.zero = nn.ModuleList(
            conv(level[-1].conv2.out_channels, level[-1].conv2.out_channels, 1)
            for level in backbone.down
        )
        self.zero_mid = conv(width, width, 1)
        # FluoGen's uncertainty heads: lower/upper offsets beside the output convolution
        self.bounds = (
            conv(backbone.width, 2 * backbone.out_channels, 3, padding=1) if bounds else None
        )
        zeroed = (self.hint, self.zero_mid, *self.zero, *([self.bounds] if bounds else []))
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def copy_encoder(self, backbone: Denoiser) -> None:
        """Start the copy from the backbone's weights (ControlNet's initialisation)."""
        for name in ("stem", "down", "downsample", "mid"):
            getattr(self, name).load_state_dict(getattr(backbone, name).state_dict())

    def forward(
        self, x_t: torch.Tensor, cond: torch.Tensor, emb: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        h = self.stem(x_t) + self.hint(cond)
        residuals = []
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
            residuals.append(self.zero[i](h))
            if i < self.levels - 1:
                h = self.downsample[i](h)
        for block in self.mid:
            h = block(h, emb)
        return residuals, self.zero_mid(h)


class ControlledDenoiser(nn.Module):
    """A frozen backbone steered by a control branch: (condition, noisy target) → objective.

    With ``bounds``, the objective's median, lower and upper quantiles (head-major).
    """

    def __init__(
        self, backbone: Denoiser, cond_channels: int, ndim: int, norm: str, bounds: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.branch = ControlBranch(backbone, cond_channels, ndim, norm, bounds)
        self.cond_channels = cond_channels
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    @property
    def classes(self) -> nn.Embedding | None:
        """The backbone's class embedding (classifier-free guidance reads its null class)."""
        return self.backbone.classes

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None
    ) -> torch.Tensor:
        cond, x_t = x[:, : self.cond_channels], x[:, self.cond_channels :]
        emb = self.backbone.embed(t, classes)
        control = self.branch(x_t, cond, emb)
        if self.branch.bounds is None:
            return self.backbone(x_t, t, classes, control=control)
        features = self.backbone.features(x_t, t, classes, control=control)
        return bounded(self.backbone.conv_out(features), self.branch.bounds(features))


def backbone_kwargs(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """The backbone model at ``path`` and the kwargs a control branch on it inherits.

    Raises
    ------
    ParameterError
        ``path`` holds no model, or one that is not a diffusion backbone.
    """
    try:
        model = load_model(path)
    except ModelError as e:
        raise ParameterError(f"backbone {path}: {e}") from None
    if model.architecture != "diffusion" or not model.kwargs.get("backbone"):
        raise ParameterError(
            f"{path} is not a diffusion backbone (a {model.architecture} model); pretrain one "
            "with zarrstain train --model diffusion2d --unconditional"
        )
    inherited = {k: v for k, v in model.kwargs.items() if k not in ("backbone", "in_channels")}
    return model, inherited


class ControlArchitecture(DiffusionArchitecture):
    """``control``: a control branch on a frozen backbone, sampled like any diffusion model."""

    name = "control"
    aliases = {}  # noqa: RUF012
    conditional = "optional"

    def build(self, **kwargs: Any) -> nn.Module:
        ref = kwargs.get("backbone") or {}
        if not isinstance(ref, dict) or "content_hash" not in ref:
            raise ParameterError(
                "a control branch needs its backbone: "
                + option("model_kwargs={'backbone': ...}", "--backbone PATH")
            )
        inner = {k: v for k, v in kwargs.items() if k != "backbone" and k != "in_channels"}
        backbone = super().build(**{**inner, "in_channels": 0})
        module = ControlledDenoiser(
            backbone,
            int(kwargs["in_channels"]),
            int(kwargs.get("ndim", 2)),
            str(kwargs.get("norm", "pixel")),
            bounds=bool(kwargs.get("quantiles")),
        )
        path = Path(str(ref.get("path", "")))
        if ref.get("path") and (path / "card.json").is_file():
            _load_backbone(module, ref)
        module.branch.copy_encoder(module.backbone)
        return module

    def channels(self, kwargs: dict[str, Any], n_inputs: int, n_outputs: int) -> dict[str, Any]:
        head = kwargs.get("head")
        if head and head.get("kind") != "quantiles":
            raise ParameterError(
                f"a control branch takes a quantiles head (FluoGen's bounds), not "
                f"{head.get('kind')!r} ({option('head=', '--head')} quantiles)"
            )
        n_targets = n_outputs // (3 if head else 1)
        rest = {k: v for k, v in kwargs.items() if k not in ("backbone", "head")}
        inner = super().channels(rest, 0, n_targets)
        if int(inner["out_channels"]) != n_targets:
            raise ParameterError(
                f"the backbone models {inner['out_channels']} fluorescence channel(s), not "
                f"{n_targets}: train the branch on the backbone's targets, in its order"
            )
        out = {**inner, "in_channels": n_inputs, "backbone": kwargs.get("backbone")}
        if head:
            out.update(head=head, quantiles=True)
        return out

    def output_head(self, kwargs: dict[str, Any]) -> OutputHead:
        """The three quantile chains' head with quantile heads, else the samples' head."""
        if (kwargs.get("head") or {}).get("kind") == "quantiles":
            spec = {k: v for k, v in kwargs["head"].items() if k != "kind"}
            return QuantileChainsHead(**_head_options(spec))
        return super().output_head(kwargs)

    def objective_loss(
        self, kwargs: dict[str, Any], pred: torch.Tensor, target: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        """With quantile heads: the median's MSE plus the bounds' pinball on the objective."""
        if kwargs.get("quantiles"):
            return quantile_loss(pred, target, mask, float(kwargs["head"].get("alpha", 0.1)))
        return super().objective_loss(kwargs, pred, target, mask)

    def train_kwargs(self, config: Any) -> dict[str, Any]:
        if not getattr(config, "backbone", None):
            raise ParameterError(
                f"a control branch trains on a frozen backbone; give it with "
                f"{option('backbone=', '--backbone PATH')}"
            )
        model, inherited = backbone_kwargs(config.backbone)
        fixed = sorted(set(config.model_kwargs or {}) & set(_MODULE_KEYS) - {"in_channels"})
        clash = [k for k in fixed if config.model_kwargs[k] != inherited.get(k)]
        if clash:
            raise ParameterError(
                "a control branch copies its backbone's network ("
                + ", ".join(f"{k}={inherited.get(k)!r}" for k in clash)
                + f"); drop model_kwargs {', '.join(clash)}"
            )
        if config.head not in ("value", "quantiles"):
            raise ParameterError(
                f"a control branch takes a quantiles head (FluoGen's bounds), not "
                f"{config.head!r} ({option('head=', '--head')} quantiles)"
            )
        head = {"head": config.output_head().to_kwargs()} if config.head == "quantiles" else {}
        ref = {
            "content_hash": model.content_hash,
            "path": str(Path(config.backbone).resolve()),
            "embedded": bool(getattr(config, "embed_backbone", False)),
        }
        return {**inherited, **(config.model_kwargs or {}), **head, "backbone": ref}

    def trainable(self, module: nn.Module) -> set[str] | None:
        """The branch only: the backbone stays frozen."""
        return {n for n, _ in module.named_parameters() if n.startswith("branch.")}

    def saved_state(self, module: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The branch's weights, and the backbone's only when it is embedded."""
        state = module.state_dict()
        if (kwargs.get("backbone") or {}).get("embedded"):
            return state
        return {k: v for k, v in state.items() if not k.startswith("backbone.")}

    def load_state(self, module: nn.Module, state: dict[str, Any], kwargs: dict[str, Any]) -> None:
        ref = kwargs.get("backbone") or {}
        if ref.get("embedded"):
            module.load_state_dict(state, strict=True)
            return
        path = Path(str(ref.get("path", "")))
        if not (path / "card.json").is_file():
            raise ModelError(
                f"this control branch needs its backbone {str(ref.get('content_hash'))[:12]} "
                f"at {path}, which is not there; put the backbone back, or save the branch "
                "with its backbone embedded (--embed-backbone)"
            )
        _load_backbone(module, ref)
        branch = {k[len("branch.") :]: v for k, v in state.items() if k.startswith("branch.")}
        module.branch.load_state_dict(branch, strict=True)


def _load_backbone(module: ControlledDenoiser, ref: dict[str, Any]) -> None:
    """The referenced backbone's weights into ``module.backbone``, its hash checked."""
    backbone = load_model(ref["path"])
    if backbone.content_hash != ref["content_hash"]:
        raise ModelError(
            f"the backbone at {ref['path']} is {backbone.content_hash[:12]}, not the "
            f"{str(ref['content_hash'])[:12]} this branch was trained on; give the right one"
        )
    module.backbone.load_state_dict(backbone.module.state_dict(), strict=True)
    for p in module.backbone.parameters():
        p.requires_grad_(False)


def _head_options(spec: dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec.get("calibration"), dict):
        spec = {**spec, "calibration": Calibration.from_dict(spec["calibration"])}
    return spec
