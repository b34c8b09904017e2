"""The documentation site builds with warnings as errors, its examples executed on the way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_the_site_builds_strictly_with_its_examples_run(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[test]')")
    site = tmp_path / "site"
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    tour = (site / "tour" / "index.html").read_text()
    assert "largest difference: 0.0" in tour  # executed: exact tiling, on the page
    api = (site / "reference" / "engine" / "index.html").read_text()
    assert "plan_prediction" in api and "Forward" in api  # generated from the docstrings
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "--sampler" in cli and "zarrstain train" in cli  # the generated flags too
