#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (see BENCHMARKS.md, "GPU"). Wheels of what the machine's
# image lacks (hydra-core, omegaconf, antlr4 runtime, faiss-cpu) are expected in .whl/; results go to $OUT.
#   bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, faiss; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'faiss', faiss.__version__)" \
    | tee -a "$OUT/device.txt"
echo "== pytest -m gpu"
timeout 110 python3 -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
echo "== bench/dist_gpu_check.py all"
timeout 170 python3 bench/dist_gpu_check.py all 2>&1 | tee "$OUT/dist_gpu_check.txt"
echo "== torchrun: 2 ranks on 1 GPU"
timeout 45 python3 -m torch.distributed.run --standalone --nproc_per_node=2 bench/dist_gpu_check.py ranks 2>&1 \
    | grep -E "ranks:|Error" | head -4 | tee -a "$OUT/dist_gpu_check.txt"
echo "== the README main job on the GPU (embedded 10k MNIST), then an interpolation grid"
start=$(date +%s)
timeout 170 python3 -m glann.train device=cuda hydra.run.dir=/tmp/gpu_run cache_dir=null > /tmp/gpu_train.log 2>&1
echo "train exit $? in $(( $(date +%s) - start )) s" | tee "$OUT/train.txt"
grep -E "device|matching with|glo: epoch 25|imle: round 20|done" /tmp/gpu_train.log | cut -c1-400 | tee -a "$OUT/train.txt"
timeout 40 python3 -m glann.sample sampler_dir=/tmp/gpu_run/sampler mode=interpolate num_pairs=8 \
    interpolation_steps=10 output=/tmp/interp.npz hydra.run.dir=/tmp/gpu_sample device=cuda > /tmp/gpu_sample.log 2>&1
cp /tmp/gpu_run/samples.png "$OUT/samples.png" 2>/dev/null; cp /tmp/interp_grid.png "$OUT/interpolation.png" 2>/dev/null
tail -3 /tmp/gpu_sample.log
