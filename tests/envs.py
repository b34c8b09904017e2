"""Virtual environments for other tools' code (iohub), built once per machine and reused.

iohub cannot share zarrstain's environment: 0.2.x needs ``zarr<3``, and the current release
(0.3.x) needs Python >= 3.12 while zarrstain's environment may be 3.11. Each tool gets a venv
of its own under ``~/.cache/zarrstain-test-envs`` (``$XDG_CACHE_HOME`` respected), keyed by the
requirement and the Python version, and is run in a subprocess. When an environment cannot be
built (no network) the tests that need it are skipped; set ``ZARRSTAIN_REQUIRE_READER_ENVS=1``
(CI does) to make that an error instead.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENVS = "ZARRSTAIN_REQUIRE_READER_ENVS"


def env_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "zarrstain-test-envs"


def unavailable(reason: str) -> None:
    """Skip, or fail when the environments are required (CI)."""
    if os.environ.get(REQUIRE_ENVS):
        pytest.fail(f"{reason} ({REQUIRE_ENVS} is set)")
    pytest.skip(reason)


def _run(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        run = _run([python, "-c", "import sys, venv; print(*sys.version_info[:2])"], 30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if run.returncode:
        return None  # e.g. a pyenv shim for a version that is installed but not selected
    major, minor = run.stdout.split()
    return int(major), int(minor)


def find_python(minimum: tuple[int, int]) -> tuple[str, tuple[int, int]] | None:
    """An interpreter of at least ``minimum`` (this one, one on PATH, or one of pyenv's)."""
    if sys.version_info[:2] >= minimum:
        return sys.executable, sys.version_info[:2]
    candidates = [shutil.which(f"python3.{m}") for m in range(minimum[1], 16)]
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(f"{pyenv}/versions/3.*/bin/python3"), reverse=True)
    for python in filter(None, candidates):
        version = _version_of(python)
        if version is not None and version >= minimum:
            return python, version
    return None


def _build(target: Path, python: str, requirement: str) -> None:
    """Create a venv with ``requirement`` at ``target``, atomically.

    Built in a temporary sibling folder and renamed into place, so an interrupted build never
    passes for a finished one and two concurrent builds (CI jobs on one machine) cannot mix:
    the first rename wins, the other build is discarded. Moving a venv leaves ``bin/python``
    working (it finds ``pyvenv.cfg`` beside itself); only console scripts' shebangs would
    break, and none are used.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        made = _run([python, "-m", "venv", str(tmp)], timeout=300)
        if made.returncode:
            unavailable(f"cannot create a venv for {requirement}: {made.stderr.strip()[-500:]}")
        # a constraint no torch satisfies: should the tool ever depend on torch, pip fails at
        # once instead of downloading gigabytes
        (tmp / "constraints.txt").write_text("torch<0\n")
        pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        options = ["--quiet", "--retries", "2", "--timeout", "30"]
        installed = _run(
            [*pip, "install", *options, "-c", str(tmp / "constraints.txt"), requirement],
            timeout=900,
        )
        if installed.returncode:
            log = (installed.stdout + installed.stderr).strip()
            if "torch" in log:
                pytest.fail(f"{requirement} now requires torch; not installed:\n{log[-2000:]}")
            last = " / ".join(log.splitlines()[-2:])
            unavailable(f"pip cannot install {requirement} (offline?): {last}")
        (tmp / ".complete").write_text(requirement + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: use its environment
            if not (target / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def tool_python(requirement: str, python: str = sys.executable) -> Path:
    """Interpreter of a venv holding ``requirement``, built on first use, reused afterwards."""
    version = _version_of(python)
    if version is None:
        unavailable(f"{python} does not run")
    name = requirement.replace("==", "-").replace(">=", "-ge-")
    target = env_root() / f"{name}-py{version[0]}.{version[1]}"
    exe = target / "bin" / "python"
    # resolve(): a venv whose base interpreter was removed since is rebuilt
    if not ((target / ".complete").is_file() and exe.resolve().is_file()):
        if target.exists():  # unfinished or broken: move it aside before rebuilding
            stale = target.with_name(f".{target.name}-stale-{os.getpid()}")
            with contextlib.suppress(OSError):  # another process may be doing the same
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
        _build(target, python, requirement)
    return exe


def run_script(python: Path, script: str, request: Any, timeout: float = 300) -> Any:
    """Run ``script`` in ``python`` with ``request`` as JSON on stdin; its JSON stdout back.

    ``-I``: none of this environment's PYTHON* variables or paths leak into the interpreter.
    """
    run = _run([str(python), "-I", "-c", script], timeout, input=json.dumps(request))
    assert run.returncode == 0, f"script failed in {python}:\n{run.stderr}"
    return json.loads(run.stdout)


#: Ends a script run by :func:`run_script` that defines ``read(case) -> dict`` (and may define
#: ``explain(case, result)``): reads every case of the request, records the warnings logged
#: meanwhile, and prints the results as JSON. A case that raises reports its traceback.
READ_CASES = r"""
import json, logging, sys, traceback

class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

_results = {}
for _case in json.load(sys.stdin):
    _log = _Collect()
    logging.getLogger().addHandler(_log)
    try:
        _results[_case["name"]] = read(_case)
    except Exception:
        _results[_case["name"]] = {"error": traceback.format_exc()}
    if "explain" in globals():
        explain(_case, _results[_case["name"]])
    _results[_case["name"]]["warnings"] = _log.messages
    logging.getLogger().removeHandler(_log)
json.dump(_results, sys.stdout)
"""
