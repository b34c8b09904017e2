"""The demo behind ``zarrstain demo``: the whole loop on a synthetic plate, in minutes on a CPU.

1. generate a plate (2 rows × 3 columns, 2 time points, 16×96×96 voxels; BF, DNA, Membrane);
2. train a small 3D fnet BF → DNA on four wells, holding out wells A/3 and B/3;
3. predict every scene with the trained model and write "DNA (predicted)" back in place;
4. evaluate the held-out wells, pixels and nuclei: ``evaluation.csv`` / ``.md``, the nuclei
   (``objects.csv``, label images in the plate) and a PNG panel per scene.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ParameterError
from zarrstain.evaluation.evaluate import Evaluation, evaluate
from zarrstain.progress import ProgressCallback
from zarrstain.training import TrainConfig, train

__all__ = ["DEMO_CONFIG", "HELD_OUT", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

HELD_OUT = ("A/3/0", "B/3/0")
#: small enough for a few CPU minutes, large enough to learn BF → DNA (Pearson r ≥ 0.85)
DEMO_CONFIG = TrainConfig(
    inputs=["BF"],
    targets=["DNA"],
    model="fnet3d",
    depth=3,
    mult_chan=8,
    steps=300,
    batch_size=4,
    patch=[16, 64, 64],
    val_scenes=list(HELD_OUT),
    validate_every=50,
    checkpoint_every=100,
)


@dataclass
class DemoResult:
    """Where the demo wrote its plate, model and evaluation."""

    plate: Path
    model: Path
    evaluation: Evaluation


def run_demo(
    directory: str | Path = "zarrstain-demo",
    *,
    config: TrainConfig = DEMO_CONFIG,
    overwrite: bool = True,
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Generate a plate, train, predict every scene in place, evaluate the held-out wells.

    Parameters
    ----------
    directory
        Output folder: ``plate.zarr``, ``model/``, ``evaluation.csv``, ``evaluation.md``,
        ``panels/``.
    config
        Training settings (default :data:`DEMO_CONFIG`).
    overwrite
        Replace an earlier demo in ``directory``.
    progress
        Called with a :class:`~zarrstain.progress.ProgressEvent` per ``"train"`` step and
        per ``"predict"`` block.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ParameterError(f"{directory} is a file; choose a folder for the demo")
    directory.mkdir(parents=True, exist_ok=True)
    plate, model_dir = directory / "plate.zarr", directory / "model"
    for old in (plate, model_dir, directory / "panels"):
        if old.exists():
            if not overwrite:
                raise FileExistsError(f"{old} exists; remove it or pass overwrite=True")
            shutil.rmtree(old)
    logger.info("generating a synthetic plate in %s", plate)
    datasets.make_plate(
        plate, rows=("A", "B"), columns=("1", "2", "3"), fields=1, shape=(2, 16, 96, 96)
    )
    trained = train(plate, config, model_dir, progress=progress)
    plan = plan_prediction(plate, trained.model, halo="exact")
    plan.run(progress=progress)
    label = trained.model.output_labels[0]
    # pixels, and the nuclei: segmented alike in DNA and its prediction, matched, scored (F1);
    # their label images are written into the plate beside the channels (open them in napari)
    result = evaluate(plate, label, "DNA", scenes=list(HELD_OUT), input_channel="BF",
                      out=directory, objects="nuclei")  # fmt: skip
    return DemoResult(plate, model_dir, result)
