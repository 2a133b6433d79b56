#!/usr/bin/env bash
# The calibration harness's second H200 run (capsim issues 10 and 11): conv2d layers,
# whole-model Llama-3.1-8B decode (CUDA graph and eager) and prefill steps, int8 GEMMs at
# M <= 16 (padded), all-reduce (skipped on one GPU, with the reason) on top of today's sweep.
# Run from the repository root on the GPU box:  OUT=dir bash benchmarks/gpu_runs/run_h200.sh
# Needs python3, numpy, torch with CUDA, nvidia-ml-py. About 5 minutes; writes 5 files.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to an empty directory}
{
  date -u +"start %FT%TZ"
  nvidia-smi -q 2>&1 | grep -viE 'serial|uuid' >"$OUT/nvidia-smi.txt"
  python3 -c 'import torch as t; print("torch", t.__version__, "cuda", t.version.cuda,
    "gpus", t.cuda.device_count(), t.cuda.get_device_name(0))'
  # SIGINT on overrun: the harness then writes what it measured (exit 130)
  timeout -s INT -k 30 390 python3 -m calibrate run --out "$OUT/h200" --budget-seconds 280
  echo "calibrate run rc=$?"
  python3 -m calibrate check "$OUT/h200" >"$OUT/check.txt" 2>&1
  echo "calibrate check rc=$?"
  cat "$OUT/check.txt"
  date -u +"end %FT%TZ"
} 2>&1 | tee "$OUT/run.log"
