#!/usr/bin/env bash
# The project's GPU checks, in one run on a machine with one CUDA GPU (CI has none):
#   1. benchmarks/gpu.py alone on the GPU (throughput, memory, precision errors), then
#      benchmarks/scale.py on a 384-field plate (÷ loop, GPU utilization sampled), then
#      benchmarks/live.py (zarrstain watch: latency per time point, sustained rate);
#   2. then side by side: the CUDA cases of the test suite, the ISL example trained and
#      predicted on CUDA, and the ISL ablation's GPU variants.
# Usage: benchmarks/gpu_checks.sh OUT_DIR   (zarrstain and its test extras installed;
# ZARRSTAIN_SHARED pointing at the shared data for the ISL steps)
set -u
out=${1:?usage: benchmarks/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 150 python3 benchmarks/gpu.py --size 2 32 1024 1024 --out "$out" >"$out/gpu.log" 2>&1
# a 384-field plate on the GPU, alone too, with the GPU's duty cycle sampled every 200 ms
nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader -lms 200 \
    >"$out/scale-utilization.csv" &
sampler=$!
timeout 120 python3 benchmarks/scale.py --fields 384 --chunks whole --models fnet --repeat 1 \
    --device cuda --out "$out/scale" >"$out/scale.log" 2>&1
kill "$sampler"
# staining while acquiring: latency per time point of a 2D and a 3D model on the GPU
timeout 90 python3 benchmarks/live.py --device cuda --time-points 12 --fractions 0.8,1.2 \
    --out "$out/live" >"$out/live.log" 2>&1
variants=(
    "2× down + EMA 0.999, 5000 steps, cosine"
    "2× down + EMA 0.999, 5000 steps, cosine, zoom"
    "2× down + EMA, 5 seeds averaged"
    "2× down + EMA 0.999, 5000 steps, cosine, 32 ch"
    "pytorch_fnet size: 32 ch, batch 24, 5000 steps"
    "2× downsampled, EMA 0.99"
    "2× down + EMA 0.999, 5000 steps, cosine, 5 seeds"
)
timeout 330 python3 benchmarks/isl_ablation.py --device cuda --jobs 6 --out "$out" \
    --variants "${variants[@]}" >"$out/ablation.log" 2>&1 &
timeout 300 python3 -m pytest -v -p no:cacheprovider -m "not slow" --durations=15 \
    tests/training/test_training.py tests/engine/test_predict.py tests/engine/test_tiling.py tests/models/test_models.py \
    tests/cli/test_cli_predict.py tests/engine/test_cluster.py tests/models/test_model_package.py \
    >"$out/pytest.log" 2>&1 &
timeout 300 python3 examples/isl_phase_to_dapi.py "$out/isl" --steps 3000 --device cuda \
    >"$out/example.log" 2>&1
wait
tail -3 "$out/scale.log"
tail -8 "$out/live.log"
tail -3 "$out/pytest.log"
tail -5 "$out/example.log"
grep -h '"variant"' "$out/ablation.log" | cut -c1-80
