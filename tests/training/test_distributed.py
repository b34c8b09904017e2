"""Data-parallel training with torchrun (gloo, 2 CPU processes) against one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zarrstain import datasets

pytestmark = pytest.mark.slow

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent))
ZARRSTAIN = shutil.which("zarrstain", path=str(Path(sys.executable).parent))


def _torchrun(args: list[str], port: int, script: str | None = None) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    target = [sys.executable, script] if script else [ZARRSTAIN]
    command = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(port),
               "--no-python", *target, *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 4, 48, 48), seed=4
    )


def _args(plate, out, batch, steps=6) -> list[str]:
    return [
        "train", str(plate), "--input", "BF", "--target", "DNA", "--model", "fnet2d",
        "--depth", "2", "--mult-chan", "4", "--patch", "16x16", "--steps", str(steps),
        "--device", "cpu", "--checkpoint-every", "3", "--batch-size", str(batch),
        "--out", str(out),
    ]  # fmt: skip


def _history(out: Path) -> list[dict]:
    return torch.load(out / "training_state.pt", weights_only=True)["history"]


def test_gradients_are_averaged_exactly_as_one_process_computes_them(tmp_path):
    """Two ranks' mean gradient of a batch-independent loss = the whole batch's gradient."""
    script = tmp_path / "grads.py"
    script.write_text(
        "import torch, torch.distributed as dist, sys\n"
        "from zarrstain.training.distributed import average_gradients, setup\n"
        "ranks = setup('cpu')\n"
        "torch.manual_seed(0)\n"
        "net = torch.nn.Conv2d(1, 3, 3)\n"
        "x = torch.randn(4, 1, 8, 8)\n"
        "part = x[2 * ranks.rank : 2 * ranks.rank + 2]\n"
        "net(part).pow(2).mean().backward()\n"
        "average_gradients(net.parameters(), ranks.world)\n"
        "if ranks.main:\n"
        "    torch.save([p.grad for p in net.parameters()], sys.argv[1])\n"
        "ranks.end()\n"
    )
    _torchrun([str(tmp_path / "grads.pt")], 29561, script=str(script))
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3)
    x = torch.randn(4, 1, 8, 8)
    net(x).pow(2).mean().backward()
    for ours, whole in zip(torch.load(tmp_path / "grads.pt"), net.parameters(), strict=True):
        torch.testing.assert_close(ours, whole.grad, rtol=1e-5, atol=1e-7)


def test_two_processes_follow_one_process_with_the_global_batch_and_resume_exactly(plate, tmp_path):
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    out = _torchrun(_args(plate, tmp_path / "ddp", 2), 29562)
    assert out.count("model:") == 1  # rank 0 reports
    one = CliRunner().invoke(cli, _args(plate, tmp_path / "one", 4))
    assert one.exit_code == 0, one.output
    ddp, single = _history(tmp_path / "ddp"), _history(tmp_path / "one")
    # the same patches: each rank draws its half of the global batch; BatchNorm normalizes by
    # each process's half on CPUs (no SyncBatchNorm there), so the losses agree closely
    np.testing.assert_allclose([h["loss"] for h in ddp], [h["loss"] for h in single],
                               rtol=0.05)  # fmt: skip
    card = json.loads((tmp_path / "ddp" / "card.json").read_text())
    assert (card["training"]["processes"], card["training"]["backend"]) == (2, "gloo")
    # interrupted after 3 steps and resumed, on 2 processes: the same run
    _torchrun(_args(plate, tmp_path / "resumed", 2, steps=3), 29563)
    _torchrun([*_args(plate, tmp_path / "resumed", 2), "--resume"], 29564)
    assert _history(tmp_path / "resumed") == ddp
    a = torch.load(tmp_path / "resumed" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp" / "weights.pt", weights_only=True)
    for key in b:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
