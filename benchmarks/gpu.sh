#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu.py; docs/precision.md): SD1.5 and SDXL U-Nets, random weights, float16; with
# HSPACE_COMFYUI also Flux.1 at full depth and 1024² in bfloat16 through ComfyUI (benchmarks/dit_cost.py).
# On a CUDA machine with Python 3.10+ and access to PyPI only:
#     bash benchmarks/gpu.sh            # makes a venv (HSPACE_BENCH_VENV, default ~/.cache/hspace-bench), installs, runs
#     bash benchmarks/gpu.sh --dry-run  # the same on the CPU at tiny sizes
# Extra arguments go to ``python -m benchmarks.gpu`` (--repeats N, --steps N). With HSPACE_COMFYUI set it then runs
# ``python -m benchmarks.gpu_rules`` (the newest core's rules for patches and loaders, through a real server).
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
"$venv/bin/python" -m benchmarks.gpu "$@"
# The newest core's rules (docs/compatibility.md): given a ComfyUI to test (HSPACE_COMFYUI, and HSPACE_VENV, a venv
# with its requirements and the pack's, e.g. from scripts/setup.sh or the current-ComfyUI kit), the pack through a
# real server on this GPU, with ComfyUI's model compiler on and off, and its MODEL moved by Select Model Device
# and the edited/plain step ratio on Flux.1 at full depth and 1024² in bfloat16 through ComfyUI (benchmarks/dit_cost.py;
# --dry-run: its tiny CPU path)
if [ -n "${HSPACE_COMFYUI:-}" ]; then
    dry=$([[ " $* " == *" --dry-run "* ]] && echo --dry-run || true)
    "${HSPACE_VENV:-$HOME/.cache/hspace-nodes/venv}/bin/python" -m benchmarks.gpu_rules $dry
    "${HSPACE_VENV:-$HOME/.cache/hspace-nodes/venv}/bin/python" -m benchmarks.dit_cost ${dry:---gpu}
fi
