"""Run the README and then the documentation's pages (in the site's order, ``mkdocs.yml``) top
to bottom, as a user who ran ``make demo`` would, in one folder: one story, told in pages.

Every fenced block has a kind. ``python`` blocks run in one namespace, in order (a later block
may use what an earlier one defined, as in a notebook); ``console`` blocks run their ``$ ...``
commands (continuation lines joined; the lines after a command are its output, not checked);
``bash`` blocks run every line; ``text``, ``json`` and ``toml`` blocks are output, listings and file
contents, and must hold no ``$ zarrstain`` command. The README's setup block (``make demo``,
``make test``) is what CI itself runs, so it is checked against the Makefile, not run again.
Blocks marked ``exec="on"`` run while the site builds (markdown-exec: ``tests/e2e/test_docs.py``).

What a test machine lacks is provided, and each provision is listed here:

- the demo folder ``zarrstain-demo/`` (the session's ``zarrstain demo`` run) and a copy of
  the repository's ``examples/`` (the README's commands run from a clone's root);
- ``pytorch_fnet/fnet3d``: the pytorch_fnet fixture from ``../shared`` (blocks naming it are
  skipped when it is absent, as in a user's clone);
- ``VSCyto3D.ckpt`` and its card ``VSCyto3D.yml``: VisCy's own UNeXt2 checkpoint fixture
  (``tests/fixtures/viscy``, random weights, made by VisCy 0.4.1) under the published name;
- the remote store ``https://example.org/data/...``: this folder served over HTTP on 127.0.0.1;
- the running cluster ``tcp://head:8786`` and ``sched.json``: a LocalCluster of this process;
- ``dask_jobqueue.SLURMCluster``: a stand-in that starts that LocalCluster with the ``GPU``
  resource its workers would declare (no SLURM here), so the block's plan and run are real.

``python tests/readme_runner.py FOLDER`` runs it by hand (FOLDER must hold a demo).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHARED = Path(os.environ.get("ZARRSTAIN_SHARED", ROOT.parent / "shared"))
FNET = SHARED / "fixtures" / "pytorch_fnet" / "fnet3d"
VISCY = Path(__file__).parent / "fixtures" / "viscy"
KINDS = ("python", "console", "bash", "text", "json", "toml")
#: the card of VisCy's VSCyto3D as its published predict configuration gives it (JSON here)
VSCYTO3D_CARD = {
    "input_labels": ["Phase3D"],
    "output_labels": ["Nuclei (predicted)", "Membrane (predicted)"],
    "normalization": "median_iqr",
    "model_config": {"head_pool": True},
}


@dataclass(frozen=True)
class Block:
    kind: str
    body: str
    line: int  # of the opening fence, 1-based
    page: str = "README.md"  # relative to the repository
    site: bool = False  # ``exec="on"``: run by the site's build (markdown-exec), not here

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def commands(self) -> list[str]:
        """The commands a console or bash block runs, continuation lines joined."""
        out: list[str] = []
        joining = False
        for raw in self.body.splitlines():
            line = raw.strip()
            if joining:
                out[-1] = out[-1][:-1].rstrip() + " " + line
            elif self.kind == "console" and raw.startswith("$ "):
                out.append(raw[2:].strip())
            elif self.kind == "bash" and line and not line.startswith("#"):
                out.append(line)
            else:
                continue
            joining = out[-1].endswith("\\")
        return out


def readme_blocks(text: str | None = None, page: str = "README.md") -> list[Block]:
    """Every fenced block of the README (or of ``text``, from ``page``), in order."""
    text = (ROOT / page).read_text() if text is None else text
    blocks, info, start, body = [], None, 0, []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("```"):
            if info is not None:
                body.append(line)
            continue
        if info is None:
            info, start, body = line.strip()[3:].strip(), i, []
            indent = len(line) - len(line.lstrip())
        else:
            kind = info.split()[0] if info else ""
            site = 'exec="on"' in info
            blocks.append(Block(kind, "\n".join(b[indent:] for b in body), start, page, site))
            info = None
    return blocks


def doc_pages() -> list[str]:
    """The README, then the documentation's pages in the site's order (``mkdocs.yml``), less
    the generated API reference."""
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def walk(nav: Any) -> Iterator[str]:
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            if isinstance(value, list):
                yield from walk(value)
            elif not value.startswith("reference/"):
                yield f"docs/{value}"

    return ["README.md", *walk(config["nav"])]


def all_blocks() -> list[Block]:
    """Every block of :func:`doc_pages`, page after page: one story, run in one folder."""
    return [b for page in doc_pages() for b in readme_blocks(page=page)]


def is_setup(block: Block) -> bool:
    """The two setup commands (CI runs them: the demo fixture and ``make test`` itself)."""
    argv = [shlex.split(c, comments=True) for c in block.commands()]
    return block.kind == "bash" and argv == [["make", "demo"], ["make", "test"]]


@contextlib.contextmanager
def _http(folder: Path) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


@contextlib.contextmanager
def _cluster(folder: Path) -> Iterator[str]:
    """A LocalCluster (threads of this process) standing in for a running cluster."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
        resources={"GPU": 1}, protocol="tcp://", host="127.0.0.1",
    ) as cluster:  # fmt: skip
        (folder / "sched.json").write_text(json.dumps({"address": cluster.scheduler_address}))
        yield cluster.scheduler_address


def _fake_jobqueue(started: list[Any]) -> types.ModuleType:
    """``dask_jobqueue`` whose SLURMCluster is a local one whose worker has the GPU resource."""
    from distributed import LocalCluster

    module = types.ModuleType("dask_jobqueue")

    class SLURMCluster(LocalCluster):
        def __init__(self, **settings: Any) -> None:
            self.settings = settings  # cores, memory, walltime, ...: what sbatch would get
            super().__init__(
                n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                resources={"GPU": 1},
            )  # fmt: skip
            started.append(self)

        def scale(self, n: int = 0, jobs: int = 0, **kwargs: Any) -> None:
            super().scale(1)  # one local worker stands in for the jobs

    module.SLURMCluster = SLURMCluster  # type: ignore[attr-defined]
    return module


def _provide(folder: Path) -> None:
    shutil.copytree(ROOT / "examples", folder / "examples", dirs_exist_ok=True)
    if FNET.is_dir():
        shutil.copytree(FNET, folder / "pytorch_fnet" / "fnet3d", dirs_exist_ok=True)
    shutil.copyfile(VISCY / "unext2.ckpt", folder / "VSCyto3D.ckpt")
    (folder / "VSCyto3D.json").write_text(json.dumps(VSCYTO3D_CARD))


def _run_command(command: str, folder: Path, env: dict[str, str], where: str) -> None:
    argv = shlex.split(command, comments=True)
    done = subprocess.run(
        argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    if done.returncode != 0 or "Traceback" in done.stderr:
        raise AssertionError(f"{where}: $ {command}\n{done.stdout}\n{done.stderr}")


#: by hand, ``--from LINE`` starts at a block; the names earlier blocks define come from here
_PRELUDE = """
import zarrstain
from zarrstain import datasets
from zarrstain.training import TrainConfig
image = zarrstain.open_image("plate.zarr", "A/1/0")
"""


def run_readme(
    folder: Path,
    blocks: list[Block] | None = None,
    start: str = "",
    report: Callable[[str], None] = lambda done: None,
) -> list[str]:
    """Run the README's and the documentation's blocks in ``folder`` (holding
    ``zarrstain-demo/``); what ran, in order.

    ``start``: ``PAGE:LINE``, skip the blocks before it (by hand, after fixing one);
    ``report`` is called with each block or command that ran.
    """
    folder = Path(folder).resolve()
    blocks = all_blocks() if blocks is None else blocks
    if start:
        page, line = start.rsplit(":", 1)
        first = next(i for i, b in enumerate(blocks) if b.page == page and b.line >= int(line))
        blocks = [Block("python", _PRELUDE, 0), *blocks[first:]]
    _provide(folder)
    ran: list[str] = []
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    before = Path.cwd()
    with _http(folder) as url, _cluster(folder) as address:
        substitute = {"https://example.org/data/": url, "tcp://head:8786": address}
        namespace: dict[str, Any] = {"__name__": "__readme__"}
        saved, started = sys.modules.get("dask_jobqueue"), []
        sys.modules["dask_jobqueue"] = _fake_jobqueue(started)
        os.chdir(folder)
        try:
            for block in blocks:
                if block.kind not in ("python", "console", "bash") or is_setup(block) or block.site:
                    continue
                body = block.body
                for a, b in substitute.items():
                    body = body.replace(a, b)
                if "pytorch_fnet/" in body and not FNET.is_dir():
                    continue  # the fixture checkpoint lives in ../shared
                where = block.where
                if block.kind == "python":
                    exec(compile(body, where, "exec"), namespace)
                    ran.append(where)
                    report(where)
                    continue
                for command in Block(block.kind, body, block.line, block.page).commands():
                    _run_command(command, folder, env, where)
                    ran.append(command)
                    report(command)
        finally:
            os.chdir(before)
            for cluster in started:
                # the stand-in's event loop thread may outlive close's 10 s join on a loaded
                # machine; it is a daemon thread of this test process, nothing to wait for
                with contextlib.suppress(TimeoutError):
                    cluster.close()
            if saved is None:
                sys.modules.pop("dask_jobqueue", None)
            else:
                sys.modules["dask_jobqueue"] = saved
    return ran


def stray_commands(blocks: list[Block]) -> list[str]:
    """Commands outside runnable blocks: ``$ zarrstain`` in text/json, untyped fences."""
    bad = [f"{b.where} has no kind ({'/'.join(KINDS)})" for b in blocks if not b.kind]
    bad += [f"{b.where}: unknown kind {b.kind!r}" for b in blocks if b.kind and b.kind not in KINDS]
    bad += [
        f"{b.where}: a command in a {b.kind} block"
        for b in blocks
        if b.kind in ("text", "json", "toml") and re.search(r"^\s*\$ ", b.body, flags=re.M)
    ]
    return bad


if __name__ == "__main__":  # pragma: no cover - by hand: readme_runner.py FOLDER [--from PAGE:LINE]
    first = sys.argv[3] if len(sys.argv) > 3 and sys.argv[2] == "--from" else ""
    import time

    t0 = time.monotonic()
    run_readme(
        Path(sys.argv[1]),
        start=first,
        report=lambda done: print(f"{time.monotonic() - t0:6.1f} s ok:", done, flush=True),
    )
