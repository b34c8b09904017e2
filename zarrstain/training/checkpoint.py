"""A training run's checkpoints: the model package and the state that resumes it.

The package holds the model to use (the best validation's weights with ``monitor``, else the
weight average, else the latest) and its curves; ``training_state.pt`` beside it the optimizer,
the random states, the history, the raw and averaged weights where they differ from the
package's, the critic (pix2pix) and float16's loss scale. Written by rank 0 alone, atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import torch

from zarrstain.errors import ParameterError, option
from zarrstain.models import Model, load_model, save_model
from zarrstain.models.model import state_dict_hash

__all__ = ["STATE", "restore", "save_checkpoint"]

logger = logging.getLogger(__name__)

STATE = "training_state.pt"


def save_checkpoint(
    model, module, optimizer, out, step, history, record, ema=None, adversary=None,
    selection=None, curves=None, scaler=None,
) -> Model:  # fmt: skip
    # the package holds the model to use: the best validation's weights (monitor), else the
    # average (EMA), else the latest; the training state what resuming needs
    module_cpu = copy.deepcopy(ema.module if ema is not None else module).to("cpu").eval()
    best = selection is not None and selection.weights is not None
    if best:
        module_cpu.load_state_dict(selection.weights)
    snapshot = dataclasses.replace(
        model,
        module=module_cpu,
        content_hash=state_dict_hash(module_cpu, model.architecture, model.kwargs),
    )
    last = {k: v for k, v in history[-1].items() if k != "step"}
    vals = [h["val_pcc"] for h in history if "val_pcc" in h]
    training = {**record, "steps": step, "last": last, **({"val_pcc": vals[-1]} if vals else {})}
    if selection is not None and selection.describe():
        training["best"] = selection.describe()
    cpu = lambda m: {k: v.cpu() for k, v in m.state_dict().items()}  # noqa: E731
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
        "monitor": selection.monitor if selection is not None else None,
        **({"raw": cpu(module)} if ema is not None or best else {}),
        **({"ema": cpu(ema.module)} if ema is not None and best else {}),
        **({"ema_updates": ema.updates} if ema else {}),
        **({"adversary": adversary.state_dict()} if adversary is not None else {}),
        **({"scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}),
    }
    files = curves.files(history) if curves is not None else None
    save_model(snapshot, out, training=training, overwrite=True, state=(STATE, state),
               files=files)  # fmt: skip
    return snapshot


def restore(
    out: Path, model: Model, optimizer, ema=None, adversary=None, selection=None,
    scaler=None,
) -> tuple[int, list]:  # fmt: skip
    if not (out / STATE).is_file():
        raise ParameterError(f"nothing to resume in {out} (no {STATE}); drop --resume")
    saved = load_model(out)
    if (saved.kwargs, saved.input_labels, saved.output_labels) != (
        model.kwargs,
        model.input_labels,
        model.output_labels,
    ):
        raise ParameterError(
            f"{out} holds a different model ({saved.kwargs}, {list(saved.input_labels)} → "
            f"{list(saved.output_labels)}); resume with the same settings, or choose a new --out"
        )
    model.module.load_state_dict(saved.module.state_dict())
    if ema is not None:  # the package: the average; the state: the raw weights
        ema.module.load_state_dict(saved.module.state_dict())
    # on the CPU: set_rng_state takes a CPU tensor only, and the optimizer moves its own state
    # to the parameters' device when it loads it
    state = torch.load(out / STATE, map_location="cpu", weights_only=True)
    monitor = selection.monitor if selection is not None else None
    if state.get("monitor") != monitor:  # the package's weights were chosen otherwise
        raise ParameterError(
            f"{out} was trained with monitor={state.get('monitor')!r}; resume it with the "
            f"same {option('monitor=', '--monitor')}, or choose a new --out"
        )
    # what trained beside the generator (states written before "kind" existed: pix2pix's)
    saved_kind = state["adversary"].get("kind", "pix2pix") if "adversary" in state else None
    kind = adversary.kind if adversary is not None else None
    if kind != saved_kind:
        trained = f"with {saved_kind}" if saved_kind else "without a critic"
        resume_as = f"--model {saved_kind}" if saved_kind else "its own --model"
        raise ParameterError(
            f"{out} was trained {trained}; resume it with {resume_as} (the same generator "
            "and critic settings), or choose a new --out"
        )
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if ema is not None:
        if "raw" not in state:
            raise ParameterError(f"{out} was trained without a weight average; resume with --ema 0")
        ema.updates = int(state["ema_updates"])
        if "ema" in state:  # the package holds the best weights, the state the average
            ema.module.load_state_dict(state["ema"])
    if "raw" in state:
        model.module.load_state_dict(state["raw"])
    if scaler is not None and "scaler" in state:  # float16's loss scale, where it was
        scaler.load_state_dict(state["scaler"])
    if selection is not None:  # the best so far, from the history; its weights: the package's
        selection.replay(state["history"], saved.module.state_dict())
    if adversary is not None:
        adversary.load_state_dict(state["adversary"])
    logger.info("resuming %s at step %d", out, state["step"])
    return int(state["step"]), list(state["history"])
