#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu.py; docs/precision.md): SD1.5 and SDXL U-Nets, random weights, float16.
# On a CUDA machine with Python 3.10+ and access to PyPI only:
#     bash benchmarks/gpu.sh            # makes a venv (HSPACE_BENCH_VENV, default ~/.cache/hspace-bench), installs, runs
#     bash benchmarks/gpu.sh --dry-run  # the same on the CPU at tiny sizes
# Extra arguments go to ``python -m benchmarks.gpu`` (--repeats N, --steps N).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${HSPACE_BENCH_VENV:-$HOME/.cache/hspace-bench}"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
# torch's default Linux wheel on PyPI is the CUDA build; hspace_core needs only these (lpips and open_clip are optional)
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet torch "diffusers>=0.30" "safetensors>=0.4" numpy
"$venv/bin/python" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.cuda.is_available())"
exec "$venv/bin/python" -m benchmarks.gpu "$@"
