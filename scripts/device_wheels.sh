#!/usr/bin/env bash
# Download, into ./.whl, the wheels a GPU machine lacks for CompRess's GPU checks: its image has
# Python 3.12 with torch, torchvision, numpy, h5py, click, tqdm, scipy and matplotlib, but no
# zarr (nor numcodecs, donfig, crc32c) and no faiss. ~21 MB: they travel with the working tree
# (`carry: [".whl"]`) and bench/gpu_check.sh installs them there. faiss-cpu, not faiss-gpu
# (whose CUDA libraries are ~1.6 GB): FAISS searches then run on the CPU there and the
# neighbour table uses the torch backend on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  zarr==3.1.6 numcodecs==0.17.1 donfig==0.8.1.post1 crc32c==2.9.post0 faiss-cpu==1.15.1 typing_extensions==4.16.0
ls -l .whl
