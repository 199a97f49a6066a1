"""Compiled device kernels cached on disk: AOTInductor packages that a later process loads in milliseconds.

``torch.compile`` keeps its compiled code in inductor's cache, but every new process still imports
Dynamo and Inductor (about 2 s here) and traces each kernel again (1-10 s per profile): the first step
of a second process waited 5-13 s (``benchmarks/results/first_step_7c7499d.txt``). This module
instead exports each kernel once (``torch.export``, dynamic sizes), compiles it ahead of time with
AOTInductor into a ``.pt2`` package under ``~/.cache/analogff/kernels`` (``$ANALOGFF_KERNEL_CACHE``)
and loads it with torch's C++ package loader (``torch._C._aoti.AOTIModelPackageLoader``): no Dynamo,
no Inductor import, no tracing, and about 20 us of host time per call instead of Dynamo's guards.

A package is one kernel for one *signature*: the code of every module of ``analogff/engine`` (a
kernel calls helpers across them; docstrings and comments do not count), torch's version, the CPU's
vector ISA and torch's thread count (inductor bakes both into the code), and per argument: a
tensor's dtype, rank and which dims are 1 (the other dims are dynamic sizes), a float (a 0-d float64
tensor input: it may change from call to call), or the value of a bool, int, string or of a float
named in :func:`static` (those select code paths and are baked in). A new package is run once on its
call's arguments and checked against the eager kernel before it is stored. Packages are written
to a temporary name and renamed, so processes that compile the same kernel at once (a sweep's
workers) never read half a file.

Only the CPU uses packages (``Kernels`` keeps ``torch.compile`` on other devices: AOTInductor on a GPU
is untested here). ``ANALOGFF_KERNEL_CACHE=off`` goes back to ``torch.compile``. The cache is only a
cache: delete it any time. A package is about 1.7 MB, all 16 profiles' about 60 MB, and every change
to the engine's code (a new version, an edited device model) makes a new set; so the cache is kept
under ``$ANALOGFF_KERNEL_CACHE_MB`` (default 512; 0: no limit): after it stores a new package it
deletes the least recently used ones (a load marks a package used) down to 80 % of the limit, never
one this process has loaded or one written in the last minute. A process that has loaded a package
keeps running it when the file goes (the loader holds its own copy); one that finds it gone
compiles it again.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

_ENGINE_DIR = Path(__file__).resolve().parent


def static(*names: str) -> Callable[[Callable], Callable]:
    """Mark a kernel's float parameters that select code paths (``if res > 0:``): their values are
    baked into the compiled package instead of passed as inputs."""

    def mark(fn: Callable) -> Callable:
        fn.__static_floats__ = frozenset(names)  # type: ignore[attr-defined]
        return fn

    return mark


def cache_dir() -> Path | None:
    """Where packages live (``$ANALOGFF_KERNEL_CACHE``, default ``~/.cache/analogff/kernels``);
    None when the variable says ``off`` / ``0``."""
    env = os.environ.get("ANALOGFF_KERNEL_CACHE", "").strip()
    if env.lower() in ("off", "0", "false", "no"):
        return None
    return Path(env).expanduser() if env else Path.home() / ".cache" / "analogff" / "kernels"


_DEFAULT_LIMIT_MB = 512


def limit_bytes() -> int | None:
    """The cache's size limit from ``$ANALOGFF_KERNEL_CACHE_MB`` (default 512 MB; 0: none), bytes."""
    env = os.environ.get("ANALOGFF_KERNEL_CACHE_MB", "").strip()
    if not env:
        return _DEFAULT_LIMIT_MB << 20
    try:
        mb = float(env)
    except ValueError:
        mb = float("nan")
    if not mb >= 0:  # also NaN
        raise ValueError(f"ANALOGFF_KERNEL_CACHE_MB={env!r}: give the kernel cache's size limit in MB, a number "
                         f">= 0 (0: no limit; unset: {_DEFAULT_LIMIT_MB})")
    return int(mb * (1 << 20)) if mb > 0 else None


def prune(root: Path, limit: int, keep: set[Path] | frozenset[Path] = frozenset(), min_age_s: float = 60.0) -> list[Path]:
    """Delete least recently used packages (by file time: written or last loaded) until the
    packages under ``root`` take at most 80 % of ``limit`` bytes; nothing happens while they take
    at most ``limit``. Packages in ``keep`` (this process's) or younger than ``min_age_s`` stay.
    A temporary package that a killed compile left behind goes first, once it is an hour old.
    Returns the deleted packages."""
    now = time.time()
    entries: list[tuple[float, Path, int]] = []
    total = 0
    for path in root.glob("*.pt2"):
        try:
            st = path.stat()
        except OSError:  # deleted by another process meanwhile
            continue
        total += st.st_size
        if path.name.startswith("tmp"):
            if now - st.st_mtime > 3600:
                entries.append((float("-inf"), path, st.st_size))
        elif path not in keep and now - st.st_mtime >= min_age_s:
            entries.append((st.st_mtime, path, st.st_size))
    removed: list[Path] = []
    if total <= limit:
        return removed
    for _, path, size in sorted(entries, key=lambda e: e[0]):
        if total <= 0.8 * limit:
            break
        for q in (path, path.with_suffix(".json"), Path(str(path) + ".json")):
            try:
                q.unlink()
            except OSError:
                pass
        total -= size
        removed.append(path)
    return removed


_SOURCE_HASH: str | None = None


def _source_hash(root: Path) -> str:
    """A digest of the code of every module of the engine (a kernel calls helpers in several of
    them); comments and docstrings do not count, so editing them keeps the packages. Parsing the
    modules takes a tenth of a second: the digest is remembered under ``root`` by the raw files' hash."""
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        paths = sorted(_ENGINE_DIR.rglob("*.py"))
        texts = [(p.relative_to(_ENGINE_DIR).as_posix(), p.read_bytes()) for p in paths]
        raw = hashlib.sha256(b"".join(name.encode() + b"\0" + data for name, data in texts)).hexdigest()[:16]
        memo = root / "sources" / raw
        try:
            _SOURCE_HASH = memo.read_text().strip()
        except OSError:
            h = hashlib.sha256()
            for name, data in texts:
                h.update(name.encode())
                h.update(_code_only(data.decode()).encode())
            _SOURCE_HASH = h.hexdigest()[:16]
            memo.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=memo.parent)
            with os.fdopen(fd, "w") as f:
                f.write(_SOURCE_HASH)
            os.replace(tmp, memo)
    return _SOURCE_HASH


def _code_only(source: str) -> str:
    """The module's syntax tree without docstrings, as text."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _platform() -> str:
    cap = torch.backends.cpu.get_cpu_capability()
    return f"torch{torch.__version__}-{cap}-t{torch.get_num_threads()}"


class _Plan:
    """A kernel's parameters, read once: names in order, defaults, ``**kw``, static floats."""

    def __init__(self, fn: Callable):
        params = list(inspect.signature(fn).parameters.values())
        self.fn = fn
        self.positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}
        self.varkw = any(p.kind is p.VAR_KEYWORD for p in params)
        self.statics = getattr(fn, "__static_floats__", frozenset())

    def bind(self, args: tuple, kwargs: dict[str, Any]) -> list[tuple[str, Any]]:
        """(name, value) of every parameter, ``**kw`` entries last in name order."""
        if len(args) > len(self.positional):
            raise TypeError(f"{self.fn.__qualname__}: {len(args)} positional arguments, at most "
                            f"{len(self.positional)}")
        values = dict(zip(self.positional, args))
        extra = {}
        for name, value in kwargs.items():
            if name in values:
                raise TypeError(f"{self.fn.__qualname__}: {name} given twice")
            if name in self.positional:
                values[name] = value
            elif self.varkw:
                extra[name] = value
            else:
                raise TypeError(f"{self.fn.__qualname__}: no parameter {name}")
        items = []
        for name in self.positional:
            if name in values:
                items.append((name, values[name]))
            elif name in self.defaults:
                items.append((name, self.defaults[name]))
            else:
                raise TypeError(f"{self.fn.__qualname__}: missing argument {name}")
        items.extend(sorted(extra.items()))
        return items


class _Call:
    """One call bound to its kernel's parameters: the package's key, its inputs, and the parameters
    baked into the package (the exported module rebuilds the keyword arguments from both)."""

    def __init__(self, plan: _Plan, args: tuple, kwargs: dict[str, Any]):
        self.fn = plan.fn
        self.names: list[str] = []  # parameter of each input, in order
        self.fixed: dict[str, Any] = {}  # parameters baked into the package
        self.inputs: list[Tensor] = []
        self.floats: dict[str, float] = {}  # dynamic floats as given (the eager check calls with them)
        key: list[Any] = [plan.fn]
        seen: dict[int, str] = {}  # storage -> the first input on it
        for name, value in plan.bind(args, kwargs):
            if isinstance(value, Tensor):
                t = value if value.is_contiguous() else value.contiguous()
                # export merges inputs that are one tensor: a call whose inputs alias gets its own package
                ptr = t.untyped_storage().data_ptr() if t.numel() else None
                alias = seen.get(ptr) if ptr is not None else None
                if ptr is not None and alias is None:
                    seen[ptr] = name
                key.append((name, t.dtype, t.device.type, tuple(s == 1 for s in t.shape), alias))
                self.names.append(name)
                self.inputs.append(t)
            elif type(value) is float and name not in plan.statics:
                key.append(name)
                self.floats[name] = value
                self.names.append(name)
                self.inputs.append(torch.tensor(value, dtype=torch.float64))
            elif isinstance(value, (bool, int, float, str)) or value is None:
                key.append((name, type(value).__name__, value))
                self.fixed[name] = value
            else:
                raise TypeError(f"kernel {plan.fn.__qualname__}: argument {name} of type {type(value).__name__} "
                                "cannot be compiled ahead of time")
        self.key = tuple(key)

    def eager_kwargs(self) -> dict[str, Any]:
        """The call's arguments as the eager kernel takes them (floats as python floats)."""
        return {**self.fixed, **dict(zip(self.names, self.inputs)), **self.floats}

    def key_text(self) -> str:
        parts = []
        for part in self.key[1:]:
            if isinstance(part, str):
                parts.append(f"{part}: float")
            elif len(part) == 5:
                name, dtype, dev, ones, alias = part
                same = f" is {alias}" if alias is not None else ""
                parts.append(f"{name}: {str(dtype)[6:]}[{','.join('1' if o else 'n' for o in ones)}]@{dev}{same}")
            else:
                parts.append(f"{part[0]}={part[2]!r}")
        return f"{self.fn.__module__}.{self.fn.__qualname__}({', '.join(parts)})"

    def digest(self, root: Path) -> str:
        text = f"{self.key_text()}|{_source_hash(root)}|{_platform()}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]


class _Exported(torch.nn.Module):
    """The kernel as a module whose inputs are the call's tensors (the rest fixed)."""

    def __init__(self, call: _Call):
        super().__init__()
        self.fn, self.names, self.fixed = call.fn, list(call.names), dict(call.fixed)

    def forward(self, *inputs: Tensor):
        kw = dict(self.fixed)
        kw.update(zip(self.names, inputs))
        out = self.fn(**kw)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class Package:
    """A loaded package: ``package(inputs) -> outputs`` (the kernel's tuple, or its one tensor)."""

    def __init__(self, path: Path, single: bool):
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", True, 1, -1)
        self.single = single

    def __call__(self, inputs: list[Tensor]):
        out = self.loader.run(inputs)
        return out[0] if self.single else tuple(out)


def _compile(call: _Call, path: Path) -> bool:
    """Export the call's kernel with dynamic sizes, compile it into ``path`` and check the package
    against the eager kernel on the call's own arguments (same dtypes and shapes, values equal up to
    float rounding: a miscompile, or a float that should be :func:`static`, raises here instead of
    changing results). Returns whether the kernel returns one tensor."""
    from torch.export import Dim, export

    dims = tuple({i: Dim.DYNAMIC for i, s in enumerate(t.shape) if s != 1} if t.dim() else None
                 for t in call.inputs)
    with warnings.catch_warnings():  # torch's own deprecation notes from inside export and the packager
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        ep = export(_Exported(call), tuple(call.inputs), dynamic_shapes=(dims,), strict=False)
    with torch.no_grad():
        want = call.fn(**call.eager_kwargs())
    single = isinstance(want, Tensor)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch._inductor.aoti_compile_and_package(ep, package_path=tmp)
        got = Package(Path(tmp), single)(call.inputs)
        _check(call, (want,) if single else tuple(want), (got,) if single else got)
        meta = {"kernel": call.key_text(), "single": single, "torch": torch.__version__, "platform": _platform()}
        Path(tmp + ".json").write_text(json.dumps(meta))
        os.replace(tmp, path)  # the package first: its .json beside it says it is complete
        os.replace(tmp + ".json", path.with_suffix(".json"))
    finally:
        for p in (tmp, tmp + ".json"):
            if os.path.exists(p):
                os.unlink(p)
    return single


def _check(call: _Call, want: tuple, got: tuple) -> None:
    """The package's outputs against the eager kernel's: dtypes and shapes equal; float values within
    rounding (at most one element in 1000 off by more, where a rounding flips a threshold)."""
    name = call.fn.__qualname__
    if len(want) != len(got):
        raise RuntimeError(f"compiled kernel {name}: {len(got)} outputs, eager {len(want)}")
    for i, (w, g) in enumerate(zip(want, got)):
        if w.dtype != g.dtype or w.shape != g.shape:
            raise RuntimeError(f"compiled kernel {name}: output {i} is {g.dtype}{list(g.shape)}, eager "
                               f"{w.dtype}{list(w.shape)} (a float argument that selects a dtype or a path "
                               "must be marked with analogff.engine.aot.static)")
        if w.is_floating_point() and w.numel():
            off = ~torch.isclose(g, w, rtol=1e-4, atol=1e-6, equal_nan=True)
            if int(off.sum()) > max(1, w.numel() // 1000):
                raise RuntimeError(f"compiled kernel {name}: output {i} differs from eager on "
                                   f"{int(off.sum())} of {w.numel()} elements")


class PackageCache:
    """Packages by call signature: loaded from disk, or compiled and stored on first use. A package
    that does not load (a truncated or foreign file) is compiled again."""

    def __init__(self, root: Path):
        self.root = root
        self.limit = limit_bytes()
        self.plans: dict[Callable, _Plan] = {}
        self.loaded: dict[tuple, Package] = {}
        self.paths: set[Path] = set()  # the packages this process loaded (never pruned by it)

    def __call__(self, fn: Callable, args: tuple, kwargs: dict[str, Any]):
        plan = self.plans.get(fn)
        if plan is None:
            plan = self.plans[fn] = _Plan(fn)
        call = _Call(plan, args, kwargs)
        pkg = self.loaded.get(call.key)
        if pkg is None:
            pkg = self.loaded[call.key] = self._load(call)
        return pkg(call.inputs)

    def path(self, call: _Call) -> Path:
        return self.root / f"{call.fn.__name__}-{call.digest(self.root)}.pt2"

    def _load(self, call: _Call) -> Package:
        path = self.path(call)
        self.paths.add(path)
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists():
            try:
                pkg = Package(path, bool(json.loads(meta.read_text())["single"]))
                try:
                    os.utime(path)  # used now: the last to be pruned
                except OSError:  # a read-only cache
                    pass
                return pkg
            except Exception:  # a broken file (or one pruned meanwhile): compile it again below
                pass
        pkg = Package(path, _compile(call, path))
        if self.limit is not None:
            prune(self.root, self.limit, self.paths)
        return pkg
