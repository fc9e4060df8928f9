#!/bin/sh
# Optional detectron2 backend for the CUDA image, built only when a commit is given ($2):
# nvcc and the CUDA headers come from the same PyPI CUDA 13.0 toolkit that torch 2.14.1 pins
# (cuda-toolkit==13.0.3), so no CUDA base image is needed. Untested: see README, Known limitations.
set -eu
venv="$1"
commit="${2:-}"
if [ -z "$commit" ]; then
    echo "detectron2: not requested (--build-arg DETECTRON2_COMMIT=<sha> builds it)"
    exit 0
fi
apt-get update
apt-get install -y --no-install-recommends git g++
rm -rf /var/lib/apt/lists/*
"$venv/bin/python" -m pip install --quiet "cuda-toolkit[nvcc,cccl]==13.0.3"
CUDA_HOME="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
export CUDA_HOME
"$venv/bin/python" -m pip install --no-build-isolation \
    "git+https://github.com/facebookresearch/detectron2.git@$commit"
