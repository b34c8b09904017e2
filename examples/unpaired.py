"""Unpaired training (CycleGAN) against paired training, on a synthetic unpaired split.

A synthetic plate (:func:`zarrstain.datasets.make_plate`, 2 rows × 3 columns × 2 fields of
128² BF / DNA) is split three ways:

- **paired**: fnet (2D) learns BF → DNA from wells A/1 and A/2, with each field's own DNA;
- **unpaired**: CycleGAN (``TrainConfig(model="cyclegan")``, MMV_Im2Im's weights) learns the
  same from BF of wells A/1 … B/1 and DNA of wells A/2 … B/2 only: the stains it learns
  from were never acquired on the fields whose brightfield it sees;
- **held out**: wells A/3 and B/3, predicted by both models and evaluated against their DNA.

Both generators are the same fnet2d (depth 3, 16 channels), trained for the same number of
steps on 64² patches, batch 8. Writes ``unpaired.json`` / ``unpaired.md`` in ``--out`` (the
README's table) and prints it. ``python examples/unpaired.py --out results`` takes a few
minutes on two CPU cores; ``--quick`` runs a few steps (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

import zarrstain
from zarrstain import datasets
from zarrstain.training import TrainConfig

INPUTS = ["A/1/0", "A/1/1", "B/1/0", "B/1/1"]  # their brightfield
TARGETS = ["A/2/0", "A/2/1", "B/2/0", "B/2/1"]  # their DNA
HELD_OUT = ["A/3/0", "A/3/1", "B/3/0", "B/3/1"]


def main(out: Path, steps: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    plate = datasets.make_plate(out / "plate.zarr", fields=2, shape=(1, 1, 128, 128), seed=3)
    common = dict(inputs=["BF"], targets=["DNA"], generator="fnet2d", depth=3, mult_chan=16,
                  steps=steps, batch_size=8, patch=[64, 64], device="cpu",
                  normalization="zscore", val_scenes=HELD_OUT[:2], validate_every=10**9,
                  checkpoint_every=max(steps // 2, 1))  # fmt: skip
    runs = {
        "paired fnet (A/1, B/1: BF with its own DNA)": TrainConfig(
            **{**common, "model": "fnet2d", "generator": None},
            scenes=INPUTS + HELD_OUT[:2],
        ),
        "unpaired CycleGAN (BF of A/1, B/1; DNA of A/2, B/2)": TrainConfig(
            **common,
            model="cyclegan",
            scenes=INPUTS + TARGETS + HELD_OUT[:2],
            target_scenes=TARGETS,
        ),
    }
    rows = []
    for i, (name, config) in enumerate(runs.items()):
        t0 = time.perf_counter()
        result = zarrstain.train(plate, config, out / f"model-{i}", overwrite=True)
        seconds = time.perf_counter() - t0
        label = f"DNA ({'paired' if i == 0 else 'unpaired'})"
        model = result.model.relabeled([label])
        for scene in HELD_OUT:
            prediction = zarrstain.predict(zarrstain.open_image(plate, scene), model)
            # in the DNA's units (the model's output intensity), rounded into the uint16 plate
            zarrstain.write_channels(plate, prediction, scene=scene, overwrite=True,
                                     dtype="uint16")  # fmt: skip
        ev = zarrstain.evaluate(plate, label, "DNA", scenes=HELD_OUT)
        pcc = [r["pcc"] for r in ev.rows]
        rows.append({"training": name, "pcc": float(np.mean(pcc)),
                     "pcc_fields": [float(p) for p in pcc], "train_seconds": seconds})  # fmt: skip
    result = {"steps": steps, "held_out": HELD_OUT, "rows": rows}
    (out / "unpaired.json").write_text(json.dumps(result, indent=2))
    lines = ["| training | held-out PCC (mean of 4 fields) | per field |", "|---|---|---|"]
    for r in rows:
        fields = ", ".join(f"{p:.3f}" for p in r["pcc_fields"])
        lines.append(f"| {r['training']} | {r['pcc']:.3f} | {fields} |")
    (out / "unpaired.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("unpaired"))
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each model")
    parser.add_argument("--quick", action="store_true", help="a few steps (a smoke test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    main(args.out, 4 if args.quick else args.steps)
