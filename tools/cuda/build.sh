#!/usr/bin/env bash
# Builds the `concepts` binary with candle's CUDA backend (`--features cuda`) where no CUDA
# toolkit is installed: nvcc, the CUDA headers and the CUDA libraries come from NVIDIA's Python
# wheels, in a virtual environment of their own. Compiling needs no GPU (the kernels are built
# for CUDA_COMPUTE_CAP, default 80 = A100; 90 for H100). Linking needs the NVIDIA driver's
# libcuda.so.1 (candle links the CUDA libraries; the driver is not a wheel): where there is none,
# everything compiles and the final link stops with "unable to find library -lcuda".
#
#   tools/cuda/build.sh [--release]
#
# The wheels of one CUDA release must match: `nvidia-nvvm` unpinned resolves to a newer release
# than `nvidia-cuda-nvcc`, whose cicc then writes PTX this ptxas rejects ("Unsupported .version
# 9.5; current version is '9.2'"). The CUDA 12 nvcc wheels ship only ptxas, so this uses CUDA 13
# (the release of torch's cu13 wheels).
set -euo pipefail
CUDA_RELEASE=${CUDA_RELEASE:-13.2}
VENV=${CUDA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/concepts-cuda-venv}
repo=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q \
  "nvidia-cuda-nvcc==$CUDA_RELEASE.*" "nvidia-nvvm==$CUDA_RELEASE.*" "nvidia-cuda-crt==$CUDA_RELEASE.*" \
  "nvidia-cuda-runtime==$CUDA_RELEASE.*" "nvidia-cuda-cccl==$CUDA_RELEASE.*" \
  "nvidia-cuda-nvrtc==$CUDA_RELEASE.*" "nvidia-cublas>=13,<14" "nvidia-curand>=10.4,<11"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda="$site/nvidia/cu13"
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export PATH="$cuda/bin:$PATH"
# The wheels hold versioned libraries only (libcublas.so.13); the linker looks for libcublas.so.
links="$VENV/link"
mkdir -p "$links"
for lib in cudart cublas cublasLt curand nvrtc; do
  ln -sf "$(ls "$cuda/lib/lib$lib.so."* | head -1)" "$links/lib$lib.so"
done
driver=$(/sbin/ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF; exit}')
if [ -n "$driver" ]; then
  ln -sf "$driver" "$links/libcuda.so"
else
  echo "tools/cuda/build.sh: no NVIDIA driver here (libcuda.so.1): compiling only, the link will fail" >&2
fi
export LIBRARY_PATH="$links${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$links:$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvcc --version | tail -1
cd "$repo"
cargo build -p concepts-cli --features cuda "$@"
