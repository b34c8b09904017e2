"""Is the virtual stain usable for the assay? Z′, effect size, F1 and KID on the class plate.

The synthetic class plate (:func:`zarrstain.datasets.make_class_plate`) is a translocation
assay: in ``control`` wells a marker outlines every cell, in ``translocated`` wells it fills the
cytoplasm, and the brightfield does not show which. This script trains on field 0 of every well

- fnet (2D) BF → Membrane (deterministic: it can only predict a blend of the two patterns),
- a class-conditional diffusion model BF → Membrane (told each well's class),

predicts the held-out fields 1-3 of every well with fnet, with the diffusion model given the
right class and given the wrong class (one sample each), writes them into the plate and
evaluates each against the real marker at the object and assay level
(:func:`zarrstain.evaluate` with ``objects="cells"`` and the class map): the assay's Z′-factor
and effect size between control and translocated fields on the real stain and on each virtual
stain, F1 at IoU 0.5 of the cells, the KID between the virtual and the real cells' features,
and the pixels' Pearson r. Writes ``assay_evaluation.json`` / ``.md`` in ``--out``.

Run ``python examples/assay_evaluation.py --out results`` (about 25 minutes on two CPU cores
with the defaults); ``--quick`` runs a few steps of everything (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import zarrstain
from zarrstain import datasets
from zarrstain.evaluation import Assay
from zarrstain.training import TrainConfig

OTHER = {"control": "translocated", "translocated": "control"}


def _train(plate, out, model, steps, reuse=False, **kwargs):
    if reuse and (out / model / "card.json").is_file():  # trained by an earlier run
        card = json.loads((out / model / "card.json").read_text())
        return zarrstain.load_model(out / model), card["training"].get("seconds", 0.0)
    config = TrainConfig(
        inputs=["BF"], targets=["Membrane"], model=model, steps=steps, batch_size=8,
        patch=[64, 64], device="cpu", normalization="zscore",
        scenes=[s for s in zarrstain.open_scenes(plate) if s.endswith("/0")],
        validate_every=10**9, checkpoint_every=max(steps // 4, 1), **kwargs,
    )  # fmt: skip
    t0 = time.perf_counter()
    zarrstain.train(plate, config, out / model, overwrite=True)
    return zarrstain.load_model(out / model), time.perf_counter() - t0


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"


def main(out: Path, steps: int, sample_steps: int, reuse: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    plate, table = datasets.make_class_plate(out / "plate.zarr", fields=4, shape=(1, 1, 128, 128))
    classes = dict(line.split(",") for line in table.read_text().split()[1:])
    fnet, t_fnet = _train(plate, out, "fnet2d", steps, reuse, depth=3, mult_chan=16)
    diffusion, t_diff = _train(plate, out, "diffusion2d", steps, reuse, classes=str(table),
                               class_dropout=0.1)  # fmt: skip
    held_out = [s for s in zarrstain.open_scenes(plate) if not s.endswith("/0")]
    sampling = {"steps": sample_steps, "sampler": "ddpm"}  # one sample: a sample, not a mean
    runs = {
        "fnet": lambda scene, c: zarrstain.predict(scene, fnet),
        "diffusion, right class": lambda scene, c: zarrstain.predict(
            scene, diffusion, seed=0, options={**sampling, "classes": c}
        ),
        "diffusion, wrong class": lambda scene, c: zarrstain.predict(
            scene, diffusion, seed=0, options={**sampling, "classes": OTHER[c]}
        ),
    }
    t0 = time.perf_counter()
    for name, run in runs.items():
        label = f"Membrane ({name})"
        preds = {}
        for sid in held_out:
            scene = zarrstain.open_image(plate, sid)
            pred = run(scene, classes["/".join(sid.split("/")[:2])])
            preds[sid] = pred.sel(c=[pred.c.values[0]]).assign_coords(c=[label])
        zarrstain.write_channels(plate, preds, dtype="uint16")
    t_predict = time.perf_counter() - t0
    rows, t0 = [], time.perf_counter()
    assay = Assay(classes=table)
    for name in ["real", *runs]:
        label = "Membrane" if name == "real" else f"Membrane ({name})"
        ev = zarrstain.evaluate(plate, label, "Membrane", scenes=held_out, objects="cells",
                                labels=False, assay=assay)  # fmt: skip
        z = ev.assay["z_prime_pred"]
        rows.append({
            "stain": name, "z_prime": z, "effect_size": ev.assay["effect_size_pred"],
            "direction": ev.assay["direction"],
            "f1": ev.summary["f1"], "kid": ev.summary["kid"], "kid_low": ev.summary["kid_low"],
            "kid_high": ev.summary["kid_high"], "pcc": ev.summary["pcc"],
        })  # fmt: skip
        logging.info("%s: Z' %.2f", name, z)
    t_evaluate = time.perf_counter() - t0
    result = {"steps": steps, "sampling": sampling, "fields_evaluated": len(held_out),
              "seconds": {"train fnet": t_fnet, "train diffusion": t_diff,
                          "predict": t_predict, "evaluate": t_evaluate},
              "rows": rows}  # fmt: skip
    (out / "assay_evaluation.json").write_text(json.dumps(result, indent=2))
    lines = ["| stain | Z′ | effect size (d) | direction | F1 @ IoU 0.5 | KID [95% CI] | PCC |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        kid = f"{_fmt(r['kid'])} [{_fmt(r['kid_low'])}, {_fmt(r['kid_high'])}]"
        lines.append(
            f"| {r['stain']} | {_fmt(r['z_prime'])} | {_fmt(r['effect_size'])} | "
            f"{r['direction']} | {_fmt(r['f1'])} | {kid} | {_fmt(r['pcc'])} |"
        )
    (out / "assay_evaluation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("assay_evaluation"))
    parser.add_argument("--steps", type=int, default=2000, help="training steps")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="a few steps of everything")
    parser.add_argument(
        "--reuse", action="store_true", help="predict with the models an earlier run left in --out"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quick:
        args.steps, args.sample_steps = 4, 2
    main(args.out, args.steps, args.sample_steps, args.reuse)
