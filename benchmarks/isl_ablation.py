"""ISL real-data ablation: which training choices move held-out Pearson r on half a well.

The In silico labeling well (``../shared/data/isl_condition_blue``: 13 phase planes → DAPI,
MAP2, NFH, 1024×1024) is split as in ``examples/isl_phase_to_dapi.py``: train on the left
half, measure Pearson r on the right half (and on the left, to see over- or under-fitting).
Each variant changes one thing of the example's recipe (2D fnet depth 4, 16 channels, a learned
projection of the 13 planes to 16, zscore with whole-image statistics, 128×128 patches, batch 8,
Adam lr 1e-3, MSE, 600 steps, random flips and 90° rotations).

Variants may also change the targets (DAPI alone), average several seeds (``ensemble``),
recompute BatchNorm statistics from the whole image's phase planes before predicting (AdaBN:
inputs only, no labels of the held-out half) or add weight decay (AdamW).

The loop here is deliberately minimal (whole planes in memory, no dask) so that variants the
library does not offer (affine augmentation, L1, In silico labeling's binned cross-entropy,
EMA, cosine decay, downsampled models) can be compared on the same footing; the model is the
library's :class:`~zarrstain.models.nets.unet.FnetUNet`.

Writes ``<out>/isl_ablation.json`` and ``.md``. One variant takes about 7 minutes on one CPU
thread (``--jobs 2`` runs two at once on a 2-core machine); the binned ones about 11, the
2000-step and 32-channel ones about 22.

Usage::

    python benchmarks/isl_ablation.py [--variants d4 none ...] [--jobs 2] [--out DIR]
    python benchmarks/isl_ablation.py --device cuda --jobs 6 --variants ...   # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional

from zarrstain.evaluation.metrics import pearson
from zarrstain.models.nets.unet import FnetUNet

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZARRSTAIN_SHARED", ROOT.parent / "shared")) / "data"
STAINS = ("dapi", "map2", "nfh")
BASE = dict(
    steps=600, aug="d4", loss="mse", seed=0, mult=16, depth=4, proj=16, patch=128, bs=8,
    lr=1e-3, cosine=False, ema=0.0, down=1, bins=32, wd=0.0, ensemble=1, adabn=False,
    targets=STAINS,
)  # fmt: skip
GPU_LONG = {"down": 2, "ema": 0.999, "steps": 5000, "cosine": True}
VARIANTS = {
    "d4": {},
    "d4 seed 1": {"seed": 1},
    "d4 seed 2": {"seed": 2},
    "no augmentation": {"aug": "none"},
    "d4 + scale 0.8-1.25": {"aug": "d4scale"},
    "affine (any angle, scale, flip)": {"aug": "affine"},
    "L1 loss": {"loss": "l1"},
    "32 intensity bins, cross-entropy (ISL)": {"loss": "ce"},
    "bins + 2× downsampled + EMA": {"loss": "ce", "down": 2, "ema": 0.99},
    "EMA of weights 0.99": {"ema": 0.99},
    "depth 5": {"depth": 5},
    "2× downsampled": {"down": 2},
    "2× downsampled, EMA 0.99": {"down": 2, "ema": 0.99},
    "2× downsampled, EMA 0.99, seed 1": {"down": 2, "ema": 0.99, "seed": 1},
    "4× downsampled, EMA 0.99": {"down": 4, "ema": 0.99},
    "32 channels, cosine lr": {"mult": 32, "cosine": True},
    "2000 steps, cosine lr": {"steps": 2000, "cosine": True},
    "2× down + EMA, DAPI only": {"down": 2, "ema": 0.99, "targets": ("dapi",)},
    "2× down + EMA, AdaBN": {"down": 2, "ema": 0.99, "adabn": True},
    "2× down + EMA, weight decay 0.05": {"down": 2, "ema": 0.99, "wd": 0.05},
    "2× down + EMA, 5 seeds averaged": {"down": 2, "ema": 0.99, "ensemble": 5},
    # longer runs, for a GPU (--device cuda): minutes there, hours on 2 CPU cores
    "2× down + EMA 0.999, 5000 steps, cosine": GPU_LONG,
    "2× down + EMA 0.999, 5000 steps, cosine, zoom": {**GPU_LONG, "aug": "d4scale"},
    "2× down + EMA 0.999, 5000 steps, cosine, 32 ch": {**GPU_LONG, "mult": 32},
    "2× down + EMA 0.999, 5000 steps, cosine, 5 seeds": {**GPU_LONG, "ensemble": 5},
    "pytorch_fnet size: 32 ch, batch 24, 5000 steps": {"mult": 32, "bs": 24, "steps": 5000},
}


def load(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Phase (13, Y, X) and targets (3, Y, X), zscored over the whole plane; raw targets."""
    phase = np.stack(
        [np.asarray(Image.open(data / f"phase_z{i:02d}.png"), np.float32) for i in range(13)]
    )
    raw = np.stack(
        [np.asarray(Image.open(data / f"{n}_confocal_maxproject.png"), np.float32) for n in STAINS]
    )

    def zscore(v: np.ndarray) -> np.ndarray:
        return (v - v.mean(axis=(1, 2), keepdims=True)) / v.std(axis=(1, 2), keepdims=True)

    return zscore(phase), zscore(raw), raw


class _Binned:
    """In silico labeling's output: per pixel, a distribution over ``bins`` intensity bins.

    Bins split each target's range on the training half evenly; the loss is cross-entropy and
    the prediction is the distribution's mean.
    """

    def __init__(self, y_train: np.ndarray, bins: int) -> None:
        lo, hi = y_train.min(axis=(1, 2)), y_train.max(axis=(1, 2))
        centers = np.stack([np.linspace(a, b, bins) for a, b in zip(lo, hi, strict=True)])
        self.centers = torch.from_numpy(centers.astype(np.float32))[None, :, :, None, None]
        self.bins = bins

    def _split(self, out: torch.Tensor) -> torch.Tensor:  # (N, T·B, Y, X) → (N, T, B, Y, X)
        n, _, y, x = out.shape
        return out.view(n, -1, self.bins, y, x)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        first, width = self.centers[:, :, 0], self.centers[:, :, 1] - self.centers[:, :, 0]
        label = torch.round((target - first) / width).clamp(0, self.bins - 1).long()
        return functional.cross_entropy(self._split(out).transpose(1, 2), label)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return (torch.softmax(self._split(out), 2) * self.centers).sum(2)


def _pool(a: np.ndarray, d: int) -> np.ndarray:
    c, y, x = a.shape
    return a.reshape(c, y // d, d, x // d, d).mean(axis=(2, 4))


def _augmented(xi, yi, aug: str, patch: int, rng: np.random.Generator, zoom: float = 1.0):
    """One (input, target) pair cut to ``patch`` after the variant's augmentation."""
    n_in = xi.shape[0]
    if aug == "affine":  # rotate by any angle, scale, maybe mirror: resampled bilinearly
        theta, s = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25) * patch / xi.shape[-1]
        f = 1 if rng.random() < 0.5 else -1
        c, si = np.cos(theta), np.sin(theta)
        m = torch.tensor([[[s * c * f, -s * si, 0], [s * si * f, s * c, 0]]], dtype=torch.float32)
        grid = functional.affine_grid(m, (1, 1, patch, patch), align_corners=False)
        both = torch.from_numpy(np.ascontiguousarray(np.concatenate([xi, yi])[None]))
        out = functional.grid_sample(both, grid, mode="bilinear", align_corners=False)[0].numpy()
        return out[:n_in], out[n_in:]
    if aug == "d4scale":  # zoom, then the d4 flips
        both = torch.from_numpy(np.ascontiguousarray(np.concatenate([xi, yi])[None]))
        out = functional.interpolate(both, scale_factor=zoom, mode="bilinear", align_corners=False)
        out = out[0, :, :patch, :patch].numpy()
        xi, yi = out[:n_in], out[n_in:]
    if aug == "d4" and rng.random() < 0.5:
        xi, yi = xi[..., ::-1], yi[..., ::-1]
    if aug in ("d4", "d4scale"):  # a y flip and the rotations alone give all eight
        if rng.random() < 0.5:
            xi, yi = xi[..., ::-1, :], yi[..., ::-1, :]
        k = int(rng.integers(4))
        xi, yi = np.rot90(xi, k, (-2, -1)), np.rot90(yi, k, (-2, -1))
    return xi, yi


def _fit(v: dict, x_all: np.ndarray, y_all: np.ndarray, seed: int, device: torch.device):
    """One model trained on the left half; returns it with its binned output (or None)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    binned = _Binned(y_all[..., : y_all.shape[-1] // 2], v["bins"]) if v["loss"] == "ce" else None
    out_channels = y_all.shape[0] * (v["bins"] if binned else 1)
    net = FnetUNet(2, v["depth"], v["mult"], 13, out_channels, v["proj"]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=v["lr"], weight_decay=v["wd"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, v["steps"]) if v["cosine"] else None
    if binned:
        binned.centers = binned.centers.to(device)
    losses = {"l1": torch.nn.L1Loss(), "mse": torch.nn.MSELoss()}
    loss_fn = binned.loss if binned else losses[v["loss"]]
    ema = None
    p = v["patch"]
    for _ in range(v["steps"]):
        xs, ys = [], []
        for _ in range(v["bs"]):
            zoom, w = 1.0, p
            if v["aug"] == "affine":  # room for any rotation at the largest scale
                w = int(np.ceil(p * 1.25 * 1.4143)) + 2
            elif v["aug"] == "d4scale":
                s = rng.uniform(0.8, 1.25)
                zoom, w = 1 / s, int(np.ceil(p * s)) + 1
            y0 = rng.integers(0, x_all.shape[1] - w + 1)
            x0 = rng.integers(0, x_all.shape[2] // 2 - w + 1)
            window = np.s_[:, y0 : y0 + w, x0 : x0 + w]
            xi, yi = _augmented(x_all[window], y_all[window], v["aug"], p, rng, zoom)
            xs.append(np.ascontiguousarray(xi))
            ys.append(np.ascontiguousarray(yi))
        net.train()
        opt.zero_grad()
        x, y = (torch.from_numpy(np.stack(a)).to(device) for a in (xs, ys))
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if v["ema"]:  # running average of weights from the first step; BatchNorm counters copied
            if ema is None:
                ema = copy.deepcopy(net)
            with torch.no_grad():
                for pe, pn in zip(
                    ema.state_dict().values(), net.state_dict().values(), strict=True
                ):
                    if pe.dtype.is_floating_point:
                        pe.mul_(v["ema"]).add_(pn, alpha=1 - v["ema"])
                    else:
                        pe.copy_(pn)
    return (net if ema is None else ema), binned


def _adapt_batchnorm(model: torch.nn.Module, image: torch.Tensor) -> None:
    """AdaBN: BatchNorm statistics recomputed from the whole image's inputs (no labels used)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: one pass gives the image's statistics
    model.train()
    with torch.no_grad():
        model(image)


def run_variant(
    name: str, settings: dict, data: Path, threads: int = 1, device: str = "cpu"
) -> dict:
    """Train one variant on the left half; Pearson r per stain on the right and left halves."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    v = {**BASE, **settings}
    x_all, y_all, raw = load(data)
    targets = [STAINS.index(t) for t in v["targets"]]
    y_all, raw = y_all[targets], raw[targets]
    half = raw.shape[-1] // 2
    if v["down"] > 1:  # the model sees d×d means; its prediction is upsampled bilinearly
        x_all, y_all = (_pool(a, v["down"]) for a in (x_all, y_all))
    start = time.perf_counter()
    image = torch.from_numpy(np.ascontiguousarray(x_all[None])).to(dev)
    preds = []
    for seed in range(v["seed"], v["seed"] + v["ensemble"]):  # an ensemble averages predictions
        model, binned = _fit(v, x_all, y_all, seed, dev)
        if v["adabn"]:
            _adapt_batchnorm(model, image)
        model.eval()
        with torch.inference_mode():
            pred = model(image)
            if binned:
                pred = binned.mean(pred)
            if v["down"] > 1:
                pred = functional.interpolate(
                    pred, scale_factor=v["down"], mode="bilinear", align_corners=False
                )
            preds.append(pred[0].float().cpu().numpy())
    pred = np.mean(preds, axis=0)
    result = {"variant": name, "seconds": round(time.perf_counter() - start), "device": device}
    result.update(v)
    for i, stain in enumerate(v["targets"]):
        result[f"{stain} right"] = round(pearson(raw[i][:, half:], pred[i][:, half:]), 4)
        result[f"{stain} left"] = round(pearson(raw[i][:, :half], pred[i][:, :half]), 4)
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="variants run at once (1 thread each)")
    parser.add_argument("--data", type=Path, default=DATA / "isl_condition_blue")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is absent: this benchmark needs the shared ISL data")
    threads = 1 if args.jobs > 1 else torch.get_num_threads()
    # CUDA cannot be initialised in a forked process: start fresh ones
    context = multiprocessing.get_context("spawn" if args.device == "cuda" else None)
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        futures = [
            pool.submit(run_variant, n, VARIANTS[n], args.data, threads, args.device)
            for n in args.variants
        ]
        rows = [f.result() for f in futures]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "isl_ablation.json").write_text(json.dumps(rows, indent=2))
    cols = ["variant", "dapi right", "dapi left", "map2 right", "nfh right", "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "–")) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    (args.out / "isl_ablation.md").write_text(
        "ISL well, trained on the left half, Pearson r (right = held out):\n\n" + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()
