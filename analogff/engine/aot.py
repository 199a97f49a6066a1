"""Compiled device kernels cached on disk: AOTInductor packages that a later process loads in milliseconds.

``torch.compile`` keeps its compiled code in inductor's cache, but every new process still imports
Dynamo and Inductor (about 2 s here) and traces each kernel again (1-10 s per profile): the first step
of a second process waited 5-13 s (``benchmarks/results/first_step_7c7499d.txt``). This module
instead exports each kernel once (``torch.export``, dynamic sizes), compiles it ahead of time with
AOTInductor into a ``.pt2`` package under ``~/.cache/analogff/kernels`` (``$ANALOGFF_KERNEL_CACHE``)
and loads it with torch's C++ package loader (``torch._C._aoti.AOTIModelPackageLoader``): no Dynamo,
no Inductor import, no tracing, and about 20 us of host time per call instead of Dynamo's guards.

A package is one kernel for one *signature*: the code the kernel runs (its own and that of every
helper it calls, in any module, with the constants they name; docstrings and comments do not count:
:func:`_code_digest`), torch's version, the CPU's vector ISA and torch's thread count (inductor
bakes both into the code), and per argument: a
tensor's dtype, rank and which dims are 1 (the other dims are dynamic sizes), a float (a 0-d float64
tensor input: it may change from call to call), or the value of a bool, int, string or of a float
named in :func:`static` (those select code paths and are baked in). A new package is run once on its
call's arguments and checked against the eager kernel before it is stored. Packages are written
to a temporary name and renamed, so processes that compile the same kernel at once (a sweep's
workers) never read half a file.

Only the CPU uses packages (``Kernels`` keeps ``torch.compile`` on other devices: AOTInductor on a GPU
is untested here). ``ANALOGFF_KERNEL_CACHE=off`` goes back to ``torch.compile``. The cache is only a
cache: delete it any time. A package is about 1.7 MB, all 16 profiles' about 60 MB, and every change
to a kernel's code (a new version, an edited device model) makes new packages; so the cache is kept
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
import marshal
import os
import sys
import tempfile
import textwrap
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

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


_CODE_DIGESTS: dict[Callable, str] = {}
_OWN_CODE: dict[Callable, tuple[bytes, tuple[Callable, ...]]] = {}

#: constants a kernel may name: their values go into its digest
_CONSTANT_TYPES = (bool, int, float, complex, str, bytes, type(None))


def _code_digest(fn: Callable) -> str:
    """A digest of the code a kernel runs: its own source and, recursively, that of every function
    it names (helpers in any module: ``analogff.crossbar._g_rel_sum`` calls ``_g_rel``), with the
    values of the constants it names (also as ``module.NAME`` of analogff's own modules) and the names
    of the modules and classes it uses; docstrings
    and comments do not count. So editing a kernel or a helper it calls makes a new package, and
    editing anything else (the engine's python around the kernels) keeps them. A name bound to
    anything else (an array, a dict) puts the whole source of the module that names it in the
    digest. Remembered per function for the process."""
    got = _CODE_DIGESTS.get(fn)
    if got is None:
        h = hashlib.sha256()
        seen: set[Callable] = set()
        todo = [fn]
        while todo:
            f = todo.pop()
            if f not in seen:
                seen.add(f)
                own, calls = _own_code(f)
                h.update(own)
                todo.extend(calls)
        got = _CODE_DIGESTS[fn] = h.hexdigest()[:16]
    return got


def _own_code(f: Callable) -> tuple[bytes, tuple[Callable, ...]]:
    """One function's part of :func:`_code_digest`: its code and what its names are bound to, and
    the functions it names."""
    got = _OWN_CODE.get(f)
    if got is not None:
        return got
    parts = [f"|{f.__module__}.{f.__qualname__}:".encode()]
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(f)))
        names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)})
        attrs = sorted({(n.value.id, n.attr) for n in ast.walk(tree)
                        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)})
        parts.append(_without_docstrings(tree).encode())
    except (OSError, TypeError, SyntaxError):  # no source (or a lambda inside an expression): its bytecode
        parts.append(marshal.dumps(f.__code__))
        names, attrs = sorted(set(f.__code__.co_names)), []
    bound = {name: f.__globals__[name] for name in names if name in f.__globals__}  # not locals, builtins
    for base, attr in attrs:  # module.NAME of analogff's own modules: followed like a plain name
        m = f.__globals__.get(base)
        if isinstance(m, types.ModuleType) and m.__name__.split(".")[0] == "analogff" and hasattr(m, attr):
            bound[f"{base}.{attr}"] = getattr(m, attr)
    calls = []
    for name, v in sorted(bound.items()):
        if isinstance(v, types.FunctionType):
            parts.append(f"|{name}->{v.__module__}.{v.__qualname__}".encode())
            calls.append(v)
        elif isinstance(v, types.ModuleType):
            parts.append(f"|{name}=module {v.__name__}".encode())
        elif isinstance(v, _CONSTANT_TYPES):
            parts.append(f"|{name}={v!r}".encode())
        elif isinstance(v, type) or getattr(v, "__module__", None) == "typing":
            parts.append(f"|{name}={getattr(v, '__module__', '')}.{getattr(v, '__qualname__', repr(v))}".encode())
        else:  # cannot tell what it holds: the whole module's code
            module = inspect.getmodule(f)
            parts.append(f"|{name}: module code ".encode())
            parts.append(_code_only(inspect.getsource(module)).encode() if module is not None else repr(v).encode())
    got = _OWN_CODE[f] = (b"".join(parts), tuple(calls))
    return got


def _code_only(source: str) -> str:
    """The module's syntax tree without docstrings, as text."""
    return _without_docstrings(ast.parse(source))


def _without_docstrings(tree: ast.AST) -> str:
    """The syntax tree's text without its docstrings (the tree is changed)."""
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

    def digest(self) -> str:
        text = f"{self.key_text()}|{_code_digest(self.fn)}|{_platform()}"
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

    told = False  #: whether this process has said that it compiles kernels

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
        return self.root / f"{call.fn.__name__}-{call.digest()}.pt2"

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
        if not PackageCache.told:  # the first compile of the process: say why the run pauses
            PackageCache.told = True
            print(f"analogff: compiling device kernels for this machine into {self.root} (seconds each, "
                  "once per machine and kernel version)", file=sys.stderr, flush=True)
        pkg = Package(path, _compile(call, path))
        if self.limit is not None:
            prune(self.root, self.limit, self.paths)
        return pkg
