"""Transfer: start training from a trained model's weights, optionally training only a part.

In silico labeling adapts a trained network to a new condition, modality or z-depth from a few
images by training the input projection or the output layer alone. :func:`start_from` copies
every weight of the trained model whose name and shape match into the new module (layers that
differ, e.g. a projection reading another number of planes or a head of another kind, keep
their fresh initialization and are named in the log), and returns the parameters to train.
Frozen layers also keep their BatchNorm statistics (:func:`train_mode`): a few images must not
overwrite statistics learned from many.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from zarrstain.errors import ParameterError, option
from zarrstain.models import load_model
from zarrstain.models.architecture import Architecture

__all__ = ["start_from", "train_mode"]

logger = logging.getLogger(__name__)

#: freeze setting → the layer group that keeps training
TRAINED = {"all-but-projection": "projection", "all-but-head": "head"}


def start_from(
    module: nn.Module, spec: Architecture, kwargs: dict[str, Any], init: str, freeze: str
) -> tuple[set[str] | None, dict[str, Any]]:
    """Load ``init``'s matching weights into ``module``; the names to train (None: all).

    Returns
    -------
    trainable, record
        Parameter names the optimizer gets (None: every one), and the card's record of the
        transfer (source, its content hash, what was frozen and what re-initialized).
    """
    source = load_model(init)
    if source.architecture != spec.name:
        raise ParameterError(
            f"{init} is a {source.architecture!r} model; {option('init=', '--init')} needs a "
            f"{spec.name!r} model to start a {spec.name!r} run from"
        )
    theirs = source.module.state_dict()
    mine = module.state_dict()
    loaded = {k: v for k, v in theirs.items() if k in mine and mine[k].shape == v.shape}
    fresh = sorted({k.rsplit(".", 1)[0] for k in mine if k not in loaded})
    if not loaded:
        raise ParameterError(f"no weight of {init} fits this model: nothing to start from")
    module.load_state_dict(loaded, strict=False)
    if fresh:
        logger.info("started from %s; initialized afresh: %s", init, ", ".join(fresh))
    trainable = None
    if freeze != "none":
        group = TRAINED[freeze]
        prefixes = spec.layer_groups(kwargs).get(group, ())
        trainable = {n for n, _ in module.named_parameters() if n.startswith(tuple(prefixes))}
        if not trainable:
            hint = " (train with a projection: --projection N)" if group == "projection" else ""
            raise ParameterError(
                f"--freeze {freeze}: this {spec.name} model has no {group} layer to train{hint}"
            )
        for name, param in module.named_parameters():  # no gradients computed for the rest
            param.requires_grad_(name in trainable)
    record = {
        "source": str(init),
        "content_hash": source.content_hash,
        "freeze": freeze,
        "initialized_afresh": fresh,
    }
    return trainable, record


def train_mode(module: nn.Module, trainable: set[str] | None) -> None:
    """Training mode, except frozen layers' normalization, which keeps its statistics."""
    module.train()
    if trainable is None:
        return
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and not any(
            p.startswith(name + ".") for p in trainable
        ):
            sub.eval()
