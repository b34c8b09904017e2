"""Evaluating a plate at screening scale: object-level evaluation against the prediction's time.

On one synthetic plate (``--fields`` wells × 1 field of ``--side``² pixels, BF and DNA; the
plate of ``benchmarks/scale.py``), in one run and one process, in this order:

- ``predict``: ``plan_prediction(...).run()`` with a small 2D fnet (random weights), writing
  ``DNA (predicted)`` in place;
- ``pixels``: ``zarrstain.evaluate`` of it against DNA (Pearson r, SSIM, ...);
- ``objects``: the same with ``objects="nuclei"`` and ``labels=False`` (segment both stains,
  match, measure, KID);
- ``objects + labels``: with the two label images of every field written into the plate.

Reports seconds, ms per field, objects per field and each time ÷ the prediction's; writes
``evaluation.json`` and ``evaluation.md`` in ``--out`` (default
``benchmarks/results/evaluation``).

    python benchmarks/evaluation.py --fields 384
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _scale_module():
    spec = importlib.util.spec_from_file_location("scale_benchmark", HERE / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, default=384)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evaluation")
    args = parser.parse_args()
    import zarrstain
    from zarrstain.engine.pipeline import plan_prediction

    scale = _scale_module()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    store = work / "plate.zarr"
    scale.make_plate(store, args.fields, args.side, None)
    model = scale._model("fnet", work / "model")

    rows = []
    start = time.perf_counter()
    plan_prediction(store, model, dtype="uint16", rescale=True).run()  # in place, as uint16
    predict = time.perf_counter() - start
    rows.append({"step": "predict", "seconds": predict})
    steps = {
        "pixels": {},
        "objects": {"objects": "nuclei", "labels": False},
        "objects + labels": {"objects": "nuclei", "labels": True},
    }
    for name, kwargs in steps.items():
        start = time.perf_counter()
        ev = zarrstain.evaluate(store, "DNA (predicted)", "DNA", **kwargs)
        seconds = time.perf_counter() - start
        row = {"step": name, "seconds": seconds}
        if "n_true" in ev.summary:
            row["objects/field"] = (ev.summary["n_true"] + ev.summary["n_pred"]) / args.fields
        rows.append(row)
    for row in rows:
        row["ms/field"] = 1000 * row["seconds"] / args.fields
        row["÷ predict"] = row["seconds"] / predict
    report = {"fields": args.fields, "side": args.side, "rows": rows}
    (args.out / "evaluation.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"{args.fields} fields of {args.side}² pixels",
        "",
        "| step | seconds | ms/field | ÷ predict | objects/field |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        per = f"{r['objects/field']:.1f}" if "objects/field" in r else ""
        lines.append(f"| {r['step']} | {r['seconds']:.1f} | {r['ms/field']:.0f} | "
                     f"{r['÷ predict']:.2f} | {per} |")  # fmt: skip
    (args.out / "evaluation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
