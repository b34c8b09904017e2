"""Fine-tune a VisCy network on real data: phase → DAPI and MAP2 on the In silico labeling well.

Starts from VisCy's FCMAE (VSCyto2D's architecture, ``UNeXt2_2D``: the shrunk fixture
``tests/fixtures/viscy/fcmae.ckpt`` that VisCy 0.4.1 itself saved, random weights, one input and
two output channels) and trains it through ``zarrstain train --model viscy`` with VisCy's loss
(0.5 L1 + 0.5 (1 − MS-SSIM)) and normalization (median / IQR) on the left half of the real ISL
field (``../shared/data/isl_condition_blue``: the middle phase plane → confocal DAPI and MAP2,
1024² pixels), holding out the right half. Reports the Pearson r of the right half before
(the checkpoint as it is) and after fine-tuning, per stain; writes ``viscy_finetune.json`` /
``.md`` in ``--out`` and exports the result back in VisCy's checkpoint layout
(``--format viscy``).

    python examples/viscy_finetune.py --out viscy-finetune      # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import zarrstain
from zarrstain.evaluation.metrics import pearson

HERE = Path(__file__).resolve().parent
INIT = HERE.parent / "tests" / "fixtures" / "viscy" / "fcmae.ckpt"
STAINS = ["DAPI", "MAP2"]
PHASE = "phase z06"  # the middle of the 13 planes


def _isl():
    spec = importlib.util.spec_from_file_location("isl_example", HERE / "isl_phase_to_dapi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _right_half_r(store: Path, model) -> dict[str, float]:
    """Pearson r of each stain's prediction on the held-out right half."""
    image = zarrstain.open_image(store)
    pred = zarrstain.predict(image, model, input_channels=[PHASE]).compute()
    half = image.sizes["x"] // 2
    out = {}
    for stain, label in zip(STAINS, model.output_labels, strict=True):
        truth = image.sel(c=stain).values[..., half:]
        out[stain] = float(pearson(truth, pred.sel(c=label).values[..., half:]))
    return out


def main(out: Path, steps: int) -> dict:
    isl = _isl()
    if not (isl.DATA / "isl_condition_blue").is_dir():
        raise SystemExit(f"{isl.DATA} is absent: this example needs the shared ISL data")
    out.mkdir(parents=True, exist_ok=True)
    store = isl.convert(isl.DATA / "isl_condition_blue", out / "isl.zarr")
    tuned = out / "fcmae-tuned"
    command = [sys.executable, "-m", "zarrstain.cli.main", "train", str(store),
               "--model", "viscy", "--init", str(INIT), "--input", PHASE,
               *(a for s in STAINS for a in ("--target", s)), "--patch", "256x256",
               "--batch-size", "4", "--steps", str(steps), "--val-fraction", "0.5",
               "--validate-every", str(max(steps // 4, 1)), "--normalization", "median_iqr",
               "--device", "cpu", "--out", str(tuned), "--overwrite"]  # fmt: skip
    subprocess.run(command, check=True)
    before = zarrstain.load_model(INIT).relabeled([f"{s} (start)" for s in STAINS])
    after = zarrstain.load_model(tuned)
    rows = [
        {"model": "VisCy FCMAE checkpoint, as loaded", **_right_half_r(store, before)},
        {"model": f"fine-tuned, {steps} steps on the left half", **_right_half_r(store, after)},
    ]
    subprocess.run([sys.executable, "-m", "zarrstain.cli.main", "export", str(tuned),
                    "--format", "viscy", "--out", str(out / "fcmae-tuned.ckpt"),
                    "--overwrite"], check=True)  # fmt: skip
    result = {"steps": steps, "init": str(INIT), "input": PHASE, "rows": rows}
    (out / "viscy_finetune.json").write_text(json.dumps(result, indent=2))
    lines = ["| model | DAPI r (right half) | MAP2 r (right half) |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['DAPI']:.3f} | {r['MAP2']:.3f} |" for r in rows]
    (out / "viscy_finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("viscy-finetune"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="a few steps (a smoke test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    main(args.out, 3 if args.quick else args.steps)
