"""Validation during training: the model's agreement with held-out patches, and its loss.

``val_pcc`` is what ``predict`` would give (every pass, the family's validation options: a
sampler's few deterministic steps), as the mean over targets of Pearson's r. ``val_loss`` is
the training loss on the same patches, in eval mode and with the random numbers a loss draws
(a diffusion step and its noise, a dropped class) fixed by the run's seed: each validation
of a run scores the same noisy targets, so its values compare across steps, and the training's
own random stream is left untouched (a run validated or not trains the same weights).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from zarrstain.evaluation.metrics import pearson

__all__ = ["validate"]


def validate(
    module: torch.nn.Module,
    val: tuple,
    device: Any,
    model: Any,
    labels: dict[str, str] | None = None,
    *,
    seed: int = 0,
    batch_size: int = 4,
) -> dict[str, float]:
    """``{"val_pcc": r, "val_loss": loss}`` of ``module`` on the held-out patches ``val``
    (``(inputs, targets, mask, scenes)``); classes by scene for class-conditional models."""
    module.eval()
    return {
        "val_pcc": _pcc(module, val, device, model, labels),
        "val_loss": _loss(module, val, device, model, labels, seed, batch_size),
    }


def _pcc(module, val, device, model, labels) -> float:
    """Mean over targets of the Pearson r of the prediction, class by class."""
    x_all, y_all, mask_all, scenes = val
    live = dataclasses.replace(model, module=module)
    groups = {None: list(range(len(x_all)))}
    if labels:
        groups = {
            c: [i for i, s in enumerate(scenes) if labels[s] == c] for c in set(labels.values())
        }
    pred = None
    for label, rows in groups.items():
        if not rows:
            continue
        options = live.spec.validation_options(live.kwargs)
        if label is not None:
            options["class_label"] = label
        run = live.with_options(**options) if options else live
        x = torch.from_numpy(x_all[rows]).to(device)
        out = run.forward(x).float().cpu().numpy()
        if pred is None:
            pred = np.zeros((len(x_all), *out.shape[1:]), np.float32)
        pred[rows] = out
    n_targets = y_all.shape[1]
    per_target = pred.shape[1] // n_targets
    values = [i * per_target for i in range(n_targets)]  # each target's first channel: its value
    # the mean over target channels of each channel's Pearson r (not one r over all of them),
    # each over the patches whose scene holds the target
    return float(
        np.mean(
            [
                pearson(y_all[mask_all[:, c], c], pred[mask_all[:, c], i])
                for c, i in enumerate(values)
                if mask_all[:, c].any()
            ]
        )
    )


@torch.no_grad()
def _loss(module, val, device, model, labels, seed: int, batch_size: int) -> float:
    """The family's training loss on the held-out patches, in batches, under a fixed seed."""
    x_all, y_all, mask_all, scenes = val
    index = {c: i for i, c in enumerate(model.kwargs.get("class_names") or ())}
    devices = [device] if torch.device(device).type == "cuda" else []
    total, count = 0.0, 0
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(x_all), batch_size):
            rows = slice(start, start + batch_size)
            batch = tuple(torch.from_numpy(a[rows]).to(device) for a in (x_all, y_all, mask_all))
            if labels:
                classes = [index[labels[s]] for s in scenes[rows]]
                batch += (torch.tensor(classes, device=device),)
            loss = model.spec.training_step(model.kwargs, module, batch)
            n = len(batch[0])
            total, count = total + float(loss) * n, count + n
    return total / count
