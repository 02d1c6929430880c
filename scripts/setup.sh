#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh clone: .venv/ with every dependency, the patched
# Horovod wheel (built once, cached), and the Delta jars (resolved once, cached).
# Quick when already done: each step is skipped when its stamp matches its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
CACHE=${RECSPARK_CACHE:-$HOME/.cache/recspark}
VENV=$ROOT/.venv
mkdir -p "$CACHE"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python

# 1. Python dependencies (re-run only when pyproject.toml changes). The wheel's base dependencies
# are only what a Spark runtime lacks; the pinned stack is in the extras `all` (= `spark` + `ml`).
# No --upgrade: what is installed and satisfies the pins stays as it is.
deps_hash=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.deps-stamp" 2>/dev/null)" != "$deps_hash" ]; then
  log "installing Python dependencies (first run downloads torch, about 3 GB)"
  "$VPY" -m pip install --quiet "pip>=23.1" "setuptools>=68,<76" wheel
  "$VPY" -m pip install --quiet -e ".[all,dev]"
  echo "$deps_hash" > "$VENV/.deps-stamp"
fi

# 2. Horovod 0.28.1, patched for C++17 and built once into the cache.
if ! "$VPY" -c "import horovod.torch" 2>/dev/null; then
  wheel=$(ls "$CACHE"/wheels/horovod-0.28.1-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    log "building Horovod 0.28.1 (once, a few minutes)"
    bash scripts/build_horovod.sh "$VPY" "$CACHE/wheels"
    wheel=$(ls "$CACHE"/wheels/horovod-0.28.1-*.whl | head -1)
  fi
  "$VPY" -m pip install --quiet --no-deps "$wheel"
fi

# 3. Delta jars, resolved once through Ivy (or Maven as a fallback) into the cache.
"$VPY" -m recspark.jars --cache "$CACHE" >&2
log "ready: $VENV/bin/recspark"
