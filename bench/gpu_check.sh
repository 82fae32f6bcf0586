#!/usr/bin/env bash
# Every GPU check of CompRess in one run, for a session lent a GPU machine (device tool):
#   1. here: bash scripts/device_wheels.sh        (wheels the machine lacks, into ./.whl)
#   2. run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# It writes under $OUT (default /tmp/gpu-check): gpu.txt (nvidia-smi, versions),
# pytest-gpu.log (`pytest -m gpu`: CUDA decode, bf16 runs and resume, no host sync per step,
# the host-memory cache path, FAISS/torch GPU kNN, the GPU cache build) and distill_step.md
# (bench/distill_step.py at its GPU defaults: batch 256, 224 px, bank 128k, bf16) and loader_e2e.md
# (bench/loader_e2e.py: the student loader against the bare ResNet-18 step). Record the
# results in bench/RESULTS.md. Exits non-zero if a check failed; the benchmark runs anyway.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi; python3 -c "import torch, zarr, faiss; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'zarr', zarr.__version__, 'faiss', faiss.__version__, 'faiss gpus', faiss.get_num_gpus())"; } > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest-gpu.log"
tests_rc=${PIPESTATUS[0]}
timeout 300 python3 bench/distill_step.py 2>&1 | tee "$OUT/distill_step.md"
# issue 15: the student loader against the bare ResNet-18 step (files / --pixels copy, --decode cpu / gpu)
timeout 200 python3 bench/loader_e2e.py --images 2048 --steps 20 --rounds 2 2>&1 | tee "$OUT/loader_e2e.md"
echo "pytest -m gpu exit status: $tests_rc"
exit "$tests_rc"
