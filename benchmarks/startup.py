"""Start-up benchmark: how long until ``zarrstain --help`` / ``info`` answer, in fresh processes.

Measures, as the median of ``--repeat`` fresh interpreter starts each:

- ``baseline``: ``import dask, zarr, xarray``; and with ``dask.array`` (what reading a store
  needs at least);
- ``import zarrstain``;
- ``zarrstain --help``;
- ``zarrstain info <store>`` on a small generated image;
- ``import torch`` and ``zarrstain.predict`` resolved (what a prediction pays on top).

Prints each time and its ratio to the baseline, and whether torch was loaded; the goal is
``--help`` within 1.5× the baseline. Writes ``<out>/startup.json`` and ``<out>/startup.md``.

Usage::

    python benchmarks/startup.py [--repeat 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zarrstain import datasets
from zarrstain.evaluation.report import markdown_table

PY = sys.executable
CLI = [PY, "-c", "import sys; from zarrstain.cli.main import main; sys.exit(main())"]


def timed(cmd: list[str], repeat: int) -> float:
    """Median wall seconds of ``cmd`` in fresh processes (output discarded)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loads_torch(code: str) -> bool:
    probe = f"import sys\n{code}\nprint('torch' in sys.modules)"
    out = subprocess.run([PY, "-c", probe], check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = datasets.make_image(Path(tmp) / "img.zarr", shape=(1, 4, 32, 32))
        info = "from zarrstain.cli.main import main\n"
        info += f"sys.argv = ['zarrstain', 'info', {str(store)!r}]\n"
        info += "try:\n    main()\nexcept SystemExit:\n    pass"
        cases = {
            "baseline: import dask, zarr, xarray": (
                [PY, "-c", "import dask, zarr, xarray"], "import dask, zarr, xarray"
            ),
            "import dask.array, zarr, xarray": (
                [PY, "-c", "import dask.array, zarr, xarray"], "import dask.array, zarr, xarray"
            ),
            "import zarrstain": ([PY, "-c", "import zarrstain"], "import zarrstain"),
            "zarrstain --help": ([*CLI, "--help"], "from zarrstain.cli.main import cli"),
            "zarrstain info STORE": ([*CLI, "info", str(store)], info),
            "import zarrstain; zarrstain.predict": (
                [PY, "-c", "import zarrstain; zarrstain.predict"],
                "import zarrstain; zarrstain.predict",
            ),
        }  # fmt: skip
        rows = []
        base = None
        for name, (cmd, probe) in cases.items():
            seconds = timed(cmd, args.repeat)
            base = base or seconds
            rows.append(
                {
                    "command": name,
                    "seconds": round(seconds, 3),
                    "ratio": round(seconds / base, 2),
                    "loads torch": loads_torch(probe),
                }
            )
    report = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "repeat": args.repeat,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(rows)
    (args.out / "startup.md").write_text(table + "\n")
    print(table)
    help_ratio = next(r["ratio"] for r in rows if r["command"] == "zarrstain --help")
    print(f"--help / baseline = {help_ratio} (goal ≤ 1.5)")


if __name__ == "__main__":
    main()
