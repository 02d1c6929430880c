#!/usr/bin/env bash
# Build horovod 0.28.1 from its PyPI sdist with the C++17 fix (upstream #3998, unreleased),
# for PyTorch + Gloo, no MPI/TensorFlow/MXNet. Usage: build_horovod.sh PYTHON OUT_DIR
set -euo pipefail
VPY=$1
OUT=$2
mkdir -p "$OUT"
# Built once: a cached wheel is reused, never rebuilt (delete it to force a rebuild).
if ls "$OUT"/horovod-0.28.1-*.whl >/dev/null 2>&1; then
  ls "$OUT"/horovod-0.28.1-*.whl
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VPY" -m pip download --quiet --no-deps --no-binary :all: horovod==0.28.1 -d "$work"
tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src=$work/horovod-0.28.1
sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/g' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || {
  echo "build_horovod: the C++17 patch did not apply to $src/horovod/torch/CMakeLists.txt" >&2; exit 1; }
# cmake >= 4 refuses the sdist's old minimum version; < 4 ignores this.
export CMAKE_POLICY_VERSION_MINIMUM=3.5
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo
export MAKEFLAGS="-j$(nproc)"
"$VPY" -m pip wheel --no-deps --no-build-isolation -w "$OUT" "$src"
ls "$OUT"/horovod-0.28.1-*.whl
