"""What the quality benchmarks share: the ISL well as a store, and the run/report scaffold.

Imported by ``few_shot.py`` and ``pix2pix.py`` (run as scripts from this folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from zarrstain import datasets
from zarrstain.evaluation.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZARRSTAIN_SHARED", ROOT.parent / "shared")) / "data"
PHASE = [f"phase z{i:02d}" for i in range(13)]


def isl_well(out: Path, corner: bool) -> tuple[Path, np.ndarray] | None:
    """The ISL well's 13 phase planes and DAPI as ``out/isl.zarr`` (None when the data is absent).

    ``corner`` keeps the top-left 256² (the benchmarks' ``--quick``). Returns the store and
    the (c, y, x) array written.
    """
    source = DATA / "isl_condition_blue"
    if not source.is_dir():
        logging.warning("%s is absent: the ISL rows are skipped", source)
        return None
    from PIL import Image

    names = [f"phase_z{i:02d}.png" for i in range(13)] + ["dapi_confocal_maxproject.png"]
    data = np.stack([np.asarray(Image.open(source / n)) for n in names]).astype(np.uint16)
    if corner:
        data = data[:, :256, :256]
    well = out / "isl.zarr"
    datasets.save_image(well, data, "cyx", channel_labels=[*PHASE, "DAPI"], levels=1,
                        chunks=(1, 256, 256))  # fmt: skip
    return well, data


def run(
    name: str,
    doc: str,
    settings: tuple[dict, dict],
    synthetic: Callable[[Path, dict], list[dict]],
    isl: Callable[[Path, dict], list[dict]],
) -> None:
    """Parse ``--out --quick --device --no-isl``, run both tasks, write ``name``.json / .md."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(f"{name.replace('_', '-')}-output"))
    parser.add_argument("--quick", action="store_true", help="Toy sizes: a smoke test.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-isl", action="store_true", help="Only the synthetic plate.")
    args = parser.parse_args()
    full, quick = settings
    s = {**(quick if args.quick else full), "device": args.device}
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    start = time.perf_counter()
    rows = synthetic(args.out, s)
    if not args.no_isl:
        rows += isl(args.out, s)
    report = {"settings": s, "rows": rows, "seconds": round(time.perf_counter() - start)}
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown_table(rows) + "\n")
    print(markdown_table(rows))
