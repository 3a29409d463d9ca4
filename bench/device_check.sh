#!/usr/bin/env bash
# The device checks of issue 16 in one call on a CUDA node (output under $OUT, default ./device_out):
# build hpcem with its CUDA kernels required, run the GPU tests, bench_gpu.py and bench_scaling.py.
# Sized for about 10 minutes on one H100/H200 node with 16 cores; SIZE=small for a first smoke run.
# Needs cupy in the Python environment (pip install cupy-cuda12x, or cupy-cuda13x for CUDA 13): the
# script says so and stops after the build when it is missing.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
say() { echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }
if [ "${SIZE:-full}" = small ]; then
  GPU_ARGS="--n 2000 --n3d 1000 --Ks 10,100 --gtm_K 300 --iter 2"
  SCALING_ARGS="--ranks 1,2,4 --n 1200 --box 40 --K 10 --iter 2"
else
  GPU_ARGS="--n 10000 --n3d 5000 --Ks 10,50,100 --gtm_K 1000 --iter 2"
  SCALING_ARGS="--ranks 1,2,4,8,16 --n 4000 --box 64 --K 100 --gtm_K 300 --iter 2"
fi
say "device"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nvcc --version | tail -1; nproc; } >>"$LOG" 2>&1
say "build (HPCEM_CUDA=ON)"
python3 -m venv .venv-device >>"$LOG" 2>&1 && . .venv-device/bin/activate
pip install -q -C cmake.define.HPCEM_CUDA=ON ".[mpich,test]" >>"$LOG" 2>&1 || { say "build FAILED"; exit 1; }
if ! python -c "import cupy, hpcem.kernels as k; assert k.has_cuda(); print('cupy', cupy.__version__)" >>"$LOG" 2>&1; then
  say "no usable cupy + hpcem._cuda + device: nothing more can run (see the log)"
  exit 2
fi
say "tests (CUDA kernels against the CPU, --gpu jobs against the CPU)"
OMP_NUM_THREADS=4 pytest -q -rs tests/test_cuda.py tests/test_gpu_path.py >"$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt" | tee -a "$LOG"
say "bench_gpu.py $GPU_ARGS"
python bench/bench_gpu.py $GPU_ARGS >"$OUT/bench_gpu.txt" 2>&1
tail -15 "$OUT/bench_gpu.txt" | tee -a "$LOG"
say "bench_scaling.py $SCALING_ARGS"
python bench/bench_scaling.py $SCALING_ARGS --out "$OUT/scaling" >"$OUT/bench_scaling.txt" 2>&1
rm -rf "$OUT/scaling/data"
grep -A6 "strong scaling" "$OUT/bench_scaling.txt" | tee -a "$LOG"
say "done"
