"""Compiled kernels cached on disk (analogff.engine.aot): a package equals the eager kernel, takes
other sizes and other float values without compiling again, loads in a fresh process without Dynamo,
and refuses a float that changes what the kernel computes unless it is marked static."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import analogff.engine.kernels as engine_kernels
from analogff.engine import aot
from analogff.engine.cells.mixed_precision import _k_mp_prepare


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kernels")


@pytest.fixture
def compiles(monkeypatch) -> list[str]:
    """The kernels compiled during a test, by name."""
    done: list[str] = []
    real = aot._compile

    def counting(call, path):
        done.append(call.fn.__name__)
        return real(call, path)

    monkeypatch.setattr(aot, "_compile", counting)
    return done


def _mp_args(n_out: int, n_in: int, gran: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    chi = torch.randn(n_out, n_in, generator=g) * 0.05
    bl = torch.randint(1, 31, (n_out, 1), generator=g).float()
    b = torch.rand(n_out, 1, generator=g)
    pd = torch.rand(n_out, 1, generator=g)
    return (chi, gran, bl, b, pd), {"res": 0.01}


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-7)


def test_package_equals_eager_at_other_sizes_and_float_values(root, compiles):
    cache = aot.PackageCache(root)
    for shape, gran in (((300, 400), 0.01), ((37, 5), 0.01), ((300, 400), 0.003)):
        args, kw = _mp_args(*shape, gran)
        _same(cache(_k_mp_prepare, args, kw), _k_mp_prepare(*args, **kw))
    assert compiles == ["_k_mp_prepare"]  # one package: sizes and gran are inputs
    assert len(list(root.glob("_k_mp_prepare-*.pt2"))) == 1
    meta = json.loads(next(root.glob("_k_mp_prepare-*.json")).read_text())
    assert meta["single"] is False and "gran: float" in meta["kernel"] and "res=0.01" in meta["kernel"]


def test_a_static_float_is_baked_in_and_a_new_value_compiles_a_new_package(root, compiles):
    cache = aot.PackageCache(root)
    args, _ = _mp_args(300, 400, 0.01)
    _same(cache(_k_mp_prepare, args, {"res": 0.0}), _k_mp_prepare(*args, res=0.0))
    assert compiles == ["_k_mp_prepare"]
    assert len(list(root.glob("_k_mp_prepare-*.pt2"))) == 2


def test_a_second_cache_loads_from_disk_without_compiling(root, compiles):
    args, kw = _mp_args(64, 100, 0.02, seed=3)
    pkg = aot.PackageCache(root).path(aot._Call(aot._Plan(_k_mp_prepare), args, kw))
    os.utime(pkg, (1e9, 1e9))  # last used in 2001
    _same(aot.PackageCache(root)(_k_mp_prepare, args, kw), _k_mp_prepare(*args, **kw))
    assert compiles == []
    assert pkg.stat().st_mtime > 1.7e9  # the load marked it used: the last to be pruned


def test_inputs_that_alias_each_other_get_their_own_package(tmp_path, compiles):
    """A call whose two arguments are one tensor must not be served by (or serve) the package of
    calls where they differ: export merges aliased inputs, so the package would read one for both."""
    cache = aot.PackageCache(tmp_path)
    (chi, gran, bl, b, pd), kw = _mp_args(300, 400, 0.01)
    _same(cache(_k_mp_prepare, (chi, gran, bl, b, b), kw), _k_mp_prepare(chi, gran, bl, b, b, **kw))
    _same(cache(_k_mp_prepare, (chi, gran, bl, b, pd), kw), _k_mp_prepare(chi, gran, bl, b, pd, **kw))
    _same(cache(_k_mp_prepare, (chi, gran, bl, pd, pd), kw), _k_mp_prepare(chi, gran, bl, pd, pd, **kw))
    assert compiles == ["_k_mp_prepare", "_k_mp_prepare"]  # aliased, and not


def test_a_broken_package_is_compiled_again(tmp_path, compiles):
    args, kw = _mp_args(40, 50, 0.01)
    aot.PackageCache(tmp_path)(_k_mp_prepare, args, kw)
    pkg = next(tmp_path.glob("*.pt2"))
    pkg.write_bytes(pkg.read_bytes()[:1000])  # truncated
    _same(aot.PackageCache(tmp_path)(_k_mp_prepare, args, kw), _k_mp_prepare(*args, **kw))
    assert compiles == ["_k_mp_prepare", "_k_mp_prepare"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]  # no temporary files left


def _k_where(x: torch.Tensor, up: float, down: float):
    """A float that, as a 0-d float64 input, would make the output float64."""
    return x * torch.where(x > 0, up, down)


def test_a_float_that_changes_the_output_must_be_static(tmp_path):
    x = torch.randn(300, 400)
    with pytest.raises(RuntimeError, match="static"):
        aot.PackageCache(tmp_path)(_k_where, (x, 2.0, 0.5), {})
    assert not list(tmp_path.glob("*.pt2"))  # nothing half-made is left to load
    fixed = aot.static("up", "down")(lambda x, up, down: _k_where(x, up, down))
    fixed.__name__ = fixed.__qualname__ = "_k_where_static"
    assert torch.equal(aot.PackageCache(tmp_path)(fixed, (x, 2.0, 0.5), {}), _k_where(x, 2.0, 0.5))


def test_a_fresh_process_loads_its_packages_without_dynamo_or_inductor(root):
    """The point of the cache: a second process neither imports Dynamo / Inductor nor traces."""
    args, kw = _mp_args(300, 400, 0.01)
    aot.PackageCache(root)(_k_mp_prepare, args, kw)  # on disk (compiled by the tests above or now)
    code = (
        "import sys, torch\n"
        "from analogff.engine.kernels import Kernels\n"
        "from analogff.engine.cells.mixed_precision import _k_mp_prepare\n"
        "chi = torch.randn(300, 400) * 0.05; col = torch.rand(300, 1)\n"
        "pd = col.clone()  # not col itself: inputs that alias have a package of their own\n"
        "out = Kernels(True)(_k_mp_prepare, chi, 0.01, col * 30, col, pd, res=0.01)\n"
        "want = _k_mp_prepare(chi, 0.01, col * 30, col, pd, res=0.01)\n"
        "ok = all(torch.allclose(a, b, atol=1e-7) for a, b in zip(out, want))\n"
        "print(ok, 'torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)\n"
    )
    env = {**os.environ, "ANALOGFF_KERNEL_CACHE": str(root), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr[-2000:]
    assert len(list(root.glob("_k_mp_prepare-*.pt2"))) == 2  # loaded, not compiled again


def _fake_packages(root: Path, ages_s: list[float], size: int = 1000) -> list[Path]:
    """Package files of ``size`` bytes (each with its .json) last used ``ages_s`` seconds ago."""
    import time

    out = []
    for i, age in enumerate(ages_s):
        p = root / f"_k_old-{i:024d}.pt2"
        p.write_bytes(b"x" * size)
        p.with_suffix(".json").write_text("{}")
        t = time.time() - age
        os.utime(p, (t, t))
        out.append(p)
    return out


def test_prune_deletes_the_least_recently_used_packages_down_to_80_percent(tmp_path):
    old = _fake_packages(tmp_path, [5000, 4000, 3000, 2000, 1000, 10])  # 6000 bytes
    stale = tmp_path / "tmpabc.pt2"  # a temporary package of a compile that was killed
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (1e9, 1e9))
    assert aot.prune(tmp_path, 7000) == []  # under the limit: nothing
    removed = aot.prune(tmp_path, 5000, keep={old[0]})
    # 7000 bytes; down to 4000: the stale temporary first, then the oldest but the kept one
    assert removed == [stale, old[1], old[2]]
    assert not stale.exists() and not old[1].exists() and not old[1].with_suffix(".json").exists()
    assert all(p.exists() for p in (old[0], old[3], old[4], old[5]))
    # not kept any more, old[0] goes first; old[5] stays, written less than a minute ago
    assert aot.prune(tmp_path, 1000) == [old[0], old[3], old[4]]
    assert sorted(p.name for p in tmp_path.glob("*.pt2")) == [old[5].name]


def _compile_by_copying(root: Path, monkeypatch, args: tuple, kw: dict) -> Path:
    """Make ``aot._compile`` store a copy of ``_k_mp_prepare``'s package for ``args`` from ``root``
    (compiled by the tests above, or now when a test runs alone) instead of compiling; returns it."""
    aot.PackageCache(root)(_k_mp_prepare, args, kw)
    built = aot.PackageCache(root).path(aot._Call(aot._Plan(_k_mp_prepare), args, kw))

    def copy(call, path):
        path.write_bytes(built.read_bytes())
        path.with_suffix(".json").write_text(built.with_suffix(".json").read_text())
        return False

    monkeypatch.setattr(aot, "_compile", copy)
    return built


def test_a_new_package_prunes_the_cache_to_its_limit(root, tmp_path, monkeypatch):
    """After storing a package, the cache deletes the least recently used others down to 80 % of
    ``$ANALOGFF_KERNEL_CACHE_MB``, never what this process loaded."""
    args, kw = _mp_args(64, 100, 0.02, seed=3)
    built = _compile_by_copying(root, monkeypatch, args, kw)
    size = built.stat().st_size
    old = _fake_packages(tmp_path, [3000, 2000, 1000], size=size)
    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE_MB", str(3.5 * size / 2**20))  # room for three and a half
    cache = aot.PackageCache(tmp_path)
    _same(cache(_k_mp_prepare, args, kw), _k_mp_prepare(*args, **kw))
    # four packages > 3.5: down to 2.8, so the two oldest go; the new one and the youngest old one stay
    assert sorted(p.name for p in tmp_path.glob("*.pt2")) == sorted([old[2].name, cache.path(
        aot._Call(aot._Plan(_k_mp_prepare), args, kw)).name])


def test_the_first_compile_of_a_process_says_so_once(root, tmp_path, monkeypatch, capsys):
    args, kw = _mp_args(64, 100, 0.02, seed=3)
    _compile_by_copying(root, monkeypatch, args, kw)
    monkeypatch.setattr(aot.PackageCache, "told", False)
    capsys.readouterr()
    cache = aot.PackageCache(tmp_path)
    cache(_k_mp_prepare, args, kw)
    cache(_k_mp_prepare, args, {"res": 0.0})  # a second package
    err = capsys.readouterr().err
    assert err.count("analogff: compiling device kernels for this machine") == 1 and str(tmp_path) in err
    aot.PackageCache(tmp_path)(_k_mp_prepare, args, kw)  # loaded: nothing to say
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("value", ["lots", "-1", "nan"])
def test_a_bad_cache_limit_is_a_one_line_error_naming_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE_MB", value)
    with pytest.raises(ValueError, match=r"^ANALOGFF_KERNEL_CACHE_MB=.*size limit in MB[^\n]*$"):
        aot.PackageCache(tmp_path)
    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE_MB", "0")
    assert aot.PackageCache(tmp_path).limit is None  # 0: no limit


def test_cache_off_goes_back_to_torch_compile(monkeypatch):
    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE", "off")
    assert aot.cache_dir() is None
    monkeypatch.setenv("ANALOGFF_KERNEL_CACHE", "~/elsewhere")
    assert aot.cache_dir() == Path("~/elsewhere").expanduser()


def test_a_kernel_argument_that_cannot_be_compiled_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="argument y of type list"):
        aot.PackageCache(tmp_path)(lambda x, y: x, (torch.zeros(3, 3), [1]), {})


_KERNEL_MODULE = '''
import torch

SCALE = {scale}


def _helper(x):
    """{doc}"""
    return x * SCALE + {offset}  # {comment}


def _unrelated(x):
    return x - {other}


def _k_demo(x):
    return torch.relu(_helper(x))
'''


def _demo_digest(tmp_path, monkeypatch, **values) -> str:
    """The code digest of ``_k_demo`` in a module written with ``values``, imported afresh."""
    import importlib
    import linecache

    fields = {"scale": 2.0, "doc": "a helper", "offset": 1.0, "comment": "c", "other": 3.0, **values}
    path = tmp_path / "kernel_demo.py"
    path.write_text(_KERNEL_MODULE.format(**fields))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # rewrites within one second: no stale .pyc
    sys.modules.pop("kernel_demo", None)
    linecache.clearcache()  # nor stale source lines (same size, same mtime)
    importlib.invalidate_caches()
    mod = importlib.import_module("kernel_demo")
    return aot._code_digest(mod._k_demo)


def test_a_package_is_keyed_by_the_code_its_kernel_runs(tmp_path, monkeypatch):
    """Editing a helper the kernel calls, in any module, or a constant it names makes a new
    package; editing docstrings, comments or code the kernel does not run keeps it."""
    base = _demo_digest(tmp_path, monkeypatch)
    assert _demo_digest(tmp_path, monkeypatch, doc="other words", comment="another comment") == base
    assert _demo_digest(tmp_path, monkeypatch, other=4.0) == base  # _unrelated: not run by the kernel
    assert _demo_digest(tmp_path, monkeypatch, offset=1.5) != base  # the helper's code
    assert _demo_digest(tmp_path, monkeypatch, scale=3.0) != base  # a constant the helper names


def _k_attr(x):
    return engine_kernels._bridge(x, x, x, x, x, x, x, x) * engine_kernels._BGK


def test_names_reached_through_an_analogff_module_are_followed():
    own, calls = aot._own_code(_k_attr)
    assert engine_kernels._bridge in calls and b"engine_kernels._BGK=0.5826" in own


def test_the_read_power_kernel_outside_the_engine_is_keyed_by_its_helper():
    """analogff.crossbar._g_rel_sum (outside analogff/engine, whose files alone were once hashed)
    calls _g_rel: both are in its digest, so editing either compiles a new package."""
    from analogff import crossbar

    assert crossbar._g_rel in aot._own_code(crossbar._g_rel_sum)[1]


def test_the_source_digest_sees_code_not_comments_or_docstrings():
    base = aot._code_only('def k(x):\n    """doc"""\n    return x * 2  # twice\n')
    assert aot._code_only('def k(x):\n    """other doc"""\n    # a comment\n    return x * 2\n') == base
    assert aot._code_only('def k(x):\n    """doc"""\n    return x * 3\n') != base
