"""Does data loading keep up with training? Patch samples/s against the model's step rate.

On one synthetic plate (``--wells`` wells of one ``--shape`` field, BF → DNA, chunks of
``--chunk`` planes × 128²), with pytorch_fnet's default 3D patch (32×64×64, batch 4) and
zarrstain's CPU-sized fnet (depth 4, 8 channels), measured in one run, one after the other
(nothing else running):

- ``model``: training steps/s on batches drawn beforehand (forward, loss, backward, Adam);
- ``loading (W workers)``: batches/s of :func:`zarrstain.training.loader.batches` alone, for
  W = 0 (in the main process), 1 and 2 ``DataLoader`` workers, decoded-chunk cache cold;
- ``training (W workers)``: steps/s of ``zarrstain.train`` end to end.

The ratio the issue asks for is ``samples/s ÷ (steps/s × batch)`` of loading with 2 workers:
≥ 1 means the workers deliver batches faster than the model consumes them. Writes
``loading.json`` and ``loading.md`` to ``--out`` (default ``benchmarks/results/loading``).

    python benchmarks/loading.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wells", type=int, default=6)
    parser.add_argument("--shape", default="64x256x256", help="z x y x of each field")
    parser.add_argument("--chunk", type=int, default=16, help="planes per chunk")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "loading")
    args = parser.parse_args()

    import torch

    import zarrstain
    from zarrstain import datasets
    from zarrstain.models import create_model
    from zarrstain.training import TrainConfig
    from zarrstain.training import train as run_training
    from zarrstain.training.loader import batches
    from zarrstain.training.sampler import PatchSampler, split_regions

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    z, y, x = (int(v) for v in args.shape.split("x"))
    cols = [str(c + 1) for c in range(args.wells)]
    store = datasets.make_plate(work / "plate.zarr", rows=("A",), columns=cols, fields=1,
                                shape=(1, z, y, x), chunks=(1, 1, args.chunk, 128, 128),
                                seed=0)  # fmt: skip
    patch = (32, 64, 64)
    config = dict(inputs=["BF"], targets=["DNA"], model="fnet3d", patch=list(patch),
                  batch_size=args.batch, device=args.device, checkpoint_every=10**6)  # fmt: skip

    def sampler():
        scenes = zarrstain.open_scenes(store)
        return PatchSampler(scenes, split_regions(scenes)[0], ["BF"], ["DNA"], patch, seed=0)

    rows = []
    # the model alone, on batches drawn beforehand
    device = torch.device(args.device)
    model = create_model("fnet", input_labels=["BF"], output_labels=["DNA"], ndim=3, depth=4,
                         mult_chan=8).module.to(device).train()  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    drawn = list(batches(sampler(), range(1, args.steps + 3), args.batch))
    tensors = [[torch.from_numpy(a).to(device) for a in b[:2]] for b in drawn]
    for k, (xb, yb) in enumerate(tensors):
        if k == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(xb), yb).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_rate = args.steps / (time.perf_counter() - start)
    rows.append({"what": "model (steps/s)", "rate": step_rate})
    for workers in (0, 1, 2):
        s = sampler()  # a cold cache each time
        feed = batches(s, range(1, args.steps + 1), args.batch, workers=workers)
        start = time.perf_counter()
        n = sum(1 for _ in feed)
        rate = n / (time.perf_counter() - start)
        rows.append({"what": f"loading, {workers} workers (batches/s)", "rate": rate,
                     "samples/s": rate * args.batch,
                     "÷ model": rate / step_rate})  # fmt: skip
    for workers in (0, 2):
        start = time.perf_counter()
        run_training(store, TrainConfig(**config, steps=args.steps, loader_workers=workers),
                     work / f"model-{workers}", overwrite=True)  # fmt: skip
        rows.append({"what": f"training, {workers} workers (steps/s)",
                     "rate": args.steps / (time.perf_counter() - start)})  # fmt: skip
    ratio = next(r["÷ model"] for r in rows if r["what"].startswith("loading, 2"))
    report = {"wells": args.wells, "shape": args.shape, "patch": patch, "batch": args.batch,
              "steps": args.steps, "device": args.device, "rows": rows,
              "loading_2_workers_over_model": ratio}  # fmt: skip
    (args.out / "loading.json").write_text(json.dumps(report, indent=2))
    lines = [f"{args.wells} fields of {args.shape}, patch 32×64×64, batch {args.batch}, "
             f"{args.device}", "", "| what | rate | samples/s | ÷ model step rate |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        extra = f"{r['samples/s']:.1f} | {r['÷ model']:.2f}" if "samples/s" in r else " | "
        lines.append(f"| {r['what']} | {r['rate']:.2f} | {extra} |")
    lines += ["", f"samples/s ÷ (steps/s × batch), 2 workers: **{ratio:.2f}**"]
    (args.out / "loading.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
