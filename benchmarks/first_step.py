"""Time to the first finished step of a fresh process, and where it goes (issue: speed, compile wait).

For each profile, fresh processes run an ``AnalogLayer(784, 500)`` step (forward + the main job's
update rule, batch 100, 1 thread):

* ``cold``: compiled kernels (the default: AOTInductor packages, ``analogff.engine.aot``), an empty
  package cache and an empty inductor cache: the packages are compiled;
* ``warm``: a second process on the packages the cold one wrote (the issue's target: <= 2 s);
* ``tc-cold`` / ``tc-warm`` (``--torch-compile``): the same with ``ANALOGFF_KERNEL_CACHE=off``, the
  kernels through ``torch.compile`` (the engine's path before the packages), on an empty and then a
  warm inductor cache;
* ``eager``: ``ANALOGFF_COMPILE=0``, no compilation at all.

Each prints the seconds from the start of the process to the end of its first step (``first step
at``), of that the import of torch + analogff (``import``) and the first step itself (``step 1``),
the steady-state step (median of steps 3-8), whether the process imported Dynamo / Inductor / SciPy's
optimize (which analogff defers, :func:`analogff.devices._import_aihwkit`), and for
``torch.compile`` processes torch's own split of the compile time (``torch._dynamo.utils.compile_times``).
Run it alone: the times are wall clock.

    python benchmarks/first_step.py --profiles ecram pcm mp_reram_es ecram_cttv2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, statistics, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(1)
from analogff.devices import load_device
from analogff.experiment import ExperimentConfig, analog_rule
from analogff.layers import AnalogLayer
t_import = time.perf_counter() - t0
profile = load_device(sys.argv[1])
rule, lr = analog_rule(ExperimentConfig(), profile)
lay = AnalogLayer(784, 500, device=profile, update=rule)
g = torch.Generator().manual_seed(0)
x = torch.rand(100, 784, generator=g)
d = torch.randn(100, 500, generator=g) * 1e-3
steps = []
for i in range(8):
    t = time.perf_counter()
    lay(x)
    lay.apply_update(x, d, lr)
    steps.append(time.perf_counter() - t)
    if i == 0:
        first = time.perf_counter() - t0
out = {"first_s": first, "import_s": t_import, "first_step_s": steps[0], "steady_ms": 1e3 * statistics.median(steps[2:]),
       "dynamo": "torch._dynamo" in sys.modules, "inductor": "torch._inductor" in sys.modules,
       "scipy_optimize": "scipy.optimize" in sys.modules}
if "torch._dynamo" in sys.modules:
    from torch._dynamo.utils import compile_times
    names, values = compile_times(repr="csv", aggregate=True)
    split = dict(zip(names, values))
    out["split_s"] = {k: round(float(split[k]), 2) for k in ("_compile.compile_inner", "bytecode_tracing",
                      "get_fake_value", "OutputGraph.call_user_compiler", "PyCodeCache.load_by_key_path") if k in split}
print("RESULT " + json.dumps(out))
"""

IMPORT_COST = r"""
import time
import torch
t = time.perf_counter(); import torch._dynamo; a = time.perf_counter() - t
t = time.perf_counter(); import torch._inductor.compile_fx; b = time.perf_counter() - t
print("RESULT {\"dynamo_import_s\": %.3f, \"inductor_import_s\": %.3f}" % (a, b))
"""


IMPORT_SPLIT = r"""
import sys
import time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import analogff.devices  # aihwkit's presets, as analogff imports them (scipy.optimize deferred)
t2 = time.perf_counter()
from analogff.devices import load_device
from analogff.experiment import ExperimentConfig, analog_rule
from analogff.layers import AnalogLayer
t3 = time.perf_counter()
print("RESULT {\"torch\": %.3f, \"aihwkit\": %.3f, \"analogff\": %.3f, \"scipy_optimize\": %d}"
      % (t1 - t0, t2 - t1, t3 - t2, "scipy.optimize" in sys.modules))
"""


def _child(code: str, *args: str, env: dict[str, str]) -> dict:
    full = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", nargs="+", default=["ecram", "pcm", "mp_reram_es", "ecram_cttv2"])
    p.add_argument("--torch-compile", nargs="*", default=None, metavar="PROFILE",
                   help="also time the torch.compile path (no names: every profile)")
    p.add_argument("--warm-only", metavar="CACHE", default=None,
                   help="only the warm process (and eager), on this existing package cache (e.g. "
                        "~/.cache/analogff/kernels after the profiles' kernels were compiled): every profile quickly")
    p.add_argument("--all", action="store_true", help="every profile in devices/")
    args = p.parse_args(argv)
    if args.all:
        args.profiles = sorted(q.stem for q in (ROOT / "devices").glob("*.toml"))
    imports = _child(IMPORT_COST, env={})
    print(f"import torch._dynamo {imports['dynamo_import_s']:.2f} s, torch._inductor.compile_fx "
          f"{imports['inductor_import_s']:.2f} s (a fresh process, after torch)")
    splits = [_child(IMPORT_SPLIT, env={}) for _ in range(5)]
    med = {k: statistics.median(sp[k] for sp in splits) for k in splits[0]}
    print(f"the step's imports, median of 5 fresh processes: torch {med['torch']:.2f} s, then aihwkit's presets "
          f"through analogff.devices {med['aihwkit']:.2f} s (scipy.optimize "
          f"{'imported' if med['scipy_optimize'] else 'deferred'}), then the rest of analogff {med['analogff']:.2f} s")
    print(f"{'profile':<16} {'mode':<7} {'first step at':>13} {'import':>7} {'step 1':>7} {'steady':>9}  "
          "dynamo/inductor/scipy.optimize imported, compile split (s)")
    for prof in args.profiles:
        tc = args.torch_compile is not None and (not args.torch_compile or prof in args.torch_compile)
        with tempfile.TemporaryDirectory(prefix="inductor_") as cache, \
                tempfile.TemporaryDirectory(prefix="kernels_") as kernels, \
                tempfile.TemporaryDirectory(prefix="inductor_tc_") as cache_tc:
            pkg = {"TORCHINDUCTOR_CACHE_DIR": cache, "ANALOGFF_KERNEL_CACHE": kernels, "ANALOGFF_COMPILE": "1"}
            runs = [("cold", pkg), ("warm", pkg)]
            if args.warm_only:
                runs = [("warm", {**pkg, "ANALOGFF_KERNEL_CACHE": str(Path(args.warm_only).expanduser())})]
            if tc:
                off = {"TORCHINDUCTOR_CACHE_DIR": cache_tc, "ANALOGFF_KERNEL_CACHE": "off", "ANALOGFF_COMPILE": "1"}
                runs += [("tc-cold", off), ("tc-warm", off)]
            runs.append(("eager", {"ANALOGFF_COMPILE": "0"}))
            for mode, env in runs:
                r = _child(CHILD, prof, env=env)
                split = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in r.get("split_s", {}).items())
                imported = "/".join("yes" if r[k] else "no" for k in ("dynamo", "inductor", "scipy_optimize"))
                print(f"{prof:<16} {mode:<7} {r['first_s']:>11.2f} s {r['import_s']:>5.2f} s {r['first_step_s']:>5.2f} s "
                      f"{r['steady_ms']:>6.1f} ms  {imported}  {split}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
