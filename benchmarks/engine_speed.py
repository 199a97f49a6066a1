"""Speed of one Forward-Forward training step on a crossbar: torch engine vs aihwkit vs digital.

One step of one layer, as ``analogff.ff`` runs it: the forward MVMs of the positive and of the
negative data of a mini-batch of 100 (one call on the 200 rows [pos; neg]) and one update with
the layer's local FF error d (SymBa loss), by the analog update rule and learning rate of the main
job's defaults (``ExperimentConfig``: the pulse counts are those of real training): ``adam``, the
periphery's Adam step on g = d^T x transferred row by row (``update_rows``), or plain pulses
``W <- W - lr d^T x`` (``sgd``, ``normalized``).
Inputs are MNIST images with the label overlaid (random sparse images if MNIST is not cached).

* ``aihwkit``: ``Crossbar(engine="aihwkit")``, aihwkit's C++ tile (sample-by-sample pulses);
* ``torch``: ``Crossbar(engine="torch")``, analogff's batched engine (``torch.compile``d kernels on
  big tiles: the first step, which compiles, is reported separately and not timed);
* ``digital``: the same step in float32 torch: ``x @ W.T`` and ``W -= lr d^T x`` (adam: the same
  Adam step on d^T x).

The engines are timed as ``Crossbar.engine`` (MVMs and pulsed update); the width sweep also times
the torch engine through ``Crossbar`` (input checks, operation and read-energy counting).

samples/s = 100 / (seconds per step). Prints markdown tables (for the README) in one run:

1. widths 256, 500, 1000, 2000 (784 inputs) on one profile (``--profile``, default reram_sb);
2. every profile in devices/ at 784 x 500, at the main job's pulse density and at a dense one (the
   ``normalized`` rule, lr 0.01: hundreds of pulses per device and step; aihwkit's cost grows with
   the pulses, the torch engine's does not), with the time of one full-MNIST epoch of a 784-500-500
   analog FF net on the torch engine (600 steps of both layers; step time only, no data loading).

3. with ``--split``: where the torch step's time goes on every profile (main job's rule, 784 x 500),
   against the digital step's parts: the forward MVMs, the periphery (d^T x and Adam), the coincidence
   moments, the device kernels (pulses), the transfer reads of a transfer compound, and the rest of
   the update (pulse-train constants, transfer bookkeeping, counting); medians over the steps.

Compilation is never timed: every profile's kernels are compiled (or loaded from the package cache,
``analogff.engine.aot``) by untimed warm-up steps first.

Usage: ``python benchmarks/engine_speed.py [--quick] [--threads N] [--profile NAME] [--torch-device cuda]
[--engines torch,aihwkit] [--batches 8] [--split]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# analogff (and through it aihwkit, whose C++ has its own OpenMP runtime) is imported in main(),
# after the thread count is chosen: OpenMP reads OMP_NUM_THREADS when the library loads.

BATCH = 100
LR = 0.1  # ExperimentConfig.ff_lr_analog (read in main())
RULE = "sgd"  # ExperimentConfig.analog_update: "sgd" (plain) or "normalized"
DENSE_LR = 0.01  # the normalized rule's lr of the dense regime
IN = 784


def bind_analogff() -> None:
    """Import the analogff names this module's helpers use (after ``--threads`` is set, so in
    :func:`main`; other benchmarks that reuse :func:`mnist_batch` or :func:`layer_error` call it too)."""
    global Crossbar, list_devices, load_device, FFConfig, ff_loss_and_error, overlay_label, AnalogLayer
    global adam_direction
    from analogff.crossbar import Crossbar
    from analogff.devices import list_devices, load_device
    from analogff.ff import AnalogLayer, FFConfig, adam_direction, ff_loss_and_error, overlay_label


def mnist_batch(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """[pos; neg] rows (2 * BATCH, 784): MNIST with the true / a wrong label overlaid."""
    try:
        from analogff.data import load_mnist

        x, y = load_mnist("train")
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        x, y = torch.from_numpy(x)[idx], torch.from_numpy(y)[idx]
    except Exception:  # no MNIST cached: sparse random images of the same statistics
        x = (torch.rand(BATCH, IN, generator=gen) < 0.19) * torch.rand(BATCH, IN, generator=gen)
        y = torch.randint(0, 10, (BATCH,), generator=gen)
    wrong = (y + torch.randint(1, 10, (BATCH,), generator=gen)) % 10
    return torch.cat([overlay_label(x, y), overlay_label(x, wrong)]), y


def layer_error(x: torch.Tensor, w: torch.Tensor, rule: str) -> torch.Tensor:
    """The layer's local FF error for the rows x (SymBa), as the periphery rule passes it on
    (``normalized``: scaled so that RMS(d^T x) = 1)."""
    h = torch.relu(x @ w.T)
    _, d = ff_loss_and_error(h[:BATCH], h[BATCH:], FFConfig())
    if rule == "normalized":
        d = d / ((d.T @ x).pow(2).mean().sqrt() + 1e-8)
    return d


class Adam:
    """The periphery's (and the digital layer's) Adam on the update matrix g = d^T x (as
    analogff.ff.AnalogLayer does it): returns the step direction u, W <- W - lr u."""

    def __init__(self, shape: tuple[int, int], device: torch.device):
        self.m = torch.zeros(shape, device=device)
        self.v = torch.zeros(shape, device=device)
        self.t = 0

    def __call__(self, g: torch.Tensor) -> torch.Tensor:
        self.t += 1
        return adam_direction(self.m, self.v, self.t, g)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, repeats: int, budget_s: float, device: torch.device = torch.device("cpu")) -> float:
    """Median seconds of ``step()`` over ``repeats`` calls (fewer if they exceed ``budget_s``)."""
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start > budget_s and len(times) >= 1:
            break
    return statistics.median(times)


def bench_width(profile: Path, n_in: int, width: int, engines: list[str], repeats: int, budget_s: float,
                gen: torch.Generator, crossbar: bool = False, rule: str | None = None,
                lr: float | None = None, device: torch.device = torch.device("cpu"),
                batches: int = 1) -> dict[str, float]:
    """Seconds per FF step (forward of 2 x 100 rows + one update) for each engine and digital,
    and the pulses per device of one update (torch engine). ``device``: where torch computes (the
    aihwkit engine always runs on the CPU). ``batches``: steps cycle through this many mini-batches
    (1: every step repeats one batch and its update direction, so the weights drift one way)."""
    rule, lr = rule or RULE, LR if lr is None else lr

    def rows() -> torch.Tensor:
        xb, _ = mnist_batch(gen)
        if n_in != IN:  # a hidden layer: normalised ReLU activities of the layer below
            xb = torch.relu(torch.randn(2 * BATCH, n_in, generator=gen))
            xb = xb / xb.norm(dim=1, keepdim=True).clamp(min=1e-8)
        return xb

    first = rows()  # (drawn before w: --batches 1 times what it always did)
    w = (torch.rand(width, n_in, generator=gen) * 2 - 1) / n_in**0.5
    pairs = [(xb.to(device), layer_error(xb, w, rule).to(device)) for xb in [first] + [rows() for _ in range(batches - 1)]]
    out: dict[str, float] = {}
    cursor = [0]

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        cursor[0] += 1
        return pairs[cursor[0] % batches]

    w_dig = w.clone().to(device)
    adam_dig = Adam(tuple(w.shape), device)

    def digital_step() -> None:
        x, d = batch()
        y = x @ w_dig.T  # the pos and the neg forward
        g = d.T @ x  # the local update matrix
        # the digital FF step: Adam (onarray is compared with digital FF's own Adam step)
        w_dig.add_(adam_dig(g) if rule in ("adam", "onarray") else g, alpha=-lr if rule != "onarray" else -1e-3)
        del y

    time_steps(digital_step, 2, budget_s, device)
    out["digital"] = time_steps(digital_step, max(repeats, 10), budget_s, device)
    for engine in engines:
        xbar = Crossbar(n_in, width, device=profile, seed=0, engine=engine)
        xbar.set_weights(w)
        if engine == "torch":
            xbar.to(device)
        eng, tile_lr = xbar.engine, lr / xbar.w_scale
        adam = Adam(tuple(w.shape), device)
        eye = torch.eye(n_in, device=device)

        def update(x: torch.Tensor, d: torch.Tensor) -> float:  # the engine itself: pulsed update in device units
            if rule != "adam":
                return eng.update(x, d, tile_lr)
            u = adam(d.T @ x)  # the periphery's Adam, then the row-by-row transfer
            return eng.update_rows(u, tile_lr) if engine == "torch" else eng.update(eye, u.T, tile_lr)

        def step() -> None:  # MVMs and pulsed update
            x, d = batch()
            eng.forward(x, False)
            update(x, d)

        t0 = time.perf_counter()
        step()  # warm-up (torch.compile happens here on big tiles)
        sync(device)
        out[f"{engine}_first"] = time.perf_counter() - t0
        if engine == "torch":  # two more untimed steps: a kernel's other variants (up/down order,
            for _ in range(2):  # flat subsets) compile on their first use
                step()
        out[engine] = time_steps(step, repeats, budget_s, device)
        if engine == "torch":
            out["pulses_per_device"] = update(*batch()) / (n_in * width)
        if engine == "torch" and crossbar:
            layer_step = AnalogLayer(n_in - 1, width, update=rule, crossbar=xbar, bias=True).to(device)

            def xbar_step() -> None:  # plus the layer's periphery, the Crossbar's checks and counting
                x, d = batch()
                xbar.forward(x)
                layer_step.apply_update(x[:, :-1], d, lr)

            xbar_step()
            out["torch_xbar"] = time_steps(xbar_step, repeats, budget_s, device)
    return out


SPLIT_PARTS = ("forward", "periphery", "moments", "device kernels", "transfer reads", "rest of update")


class StepSplit:
    """Wall time of the parts of a torch-engine step, by wrapping engine functions (benchmark only).

    Each wrapped call adds its time to its part, minus the time of wrapped calls inside it (a part
    is exclusive: a transfer's device pulses count as device kernels, not transfer reads)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = dict.fromkeys(SPLIT_PARTS, 0.0)
        self._inner: list[float] = []
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, part: str) -> None:
        original = getattr(owner, name)

        def timed(*a, **k):
            self._inner.append(0.0)
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                dt = time.perf_counter() - t0
                inner = self._inner.pop()
                self.t[part] += dt - inner
                if self._inner:
                    self._inner[-1] += dt

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def install(self) -> "StepSplit":
        from analogff.engine import device_array, engine
        from analogff.engine.cells import one_sided, single, transfer

        self.wrap(engine.TorchPulsedEngine, "forward", "forward")
        for mod in (single, one_sided, transfer):  # (a row transfer's moments fused into the device
            for name in ("_coincidence_moments", "_rowwise_moments", "rowwise_signed"):  # kernel: device kernels)
                if hasattr(mod, name):
                    self.wrap(mod, name, "moments")
        self.wrap(device_array.DeviceArray, "pulse", "device kernels")
        self.wrap(device_array.DeviceArray, "pulse_pair", "device kernels")
        self.wrap(device_array.DeviceArray, "pulse_signed", "device kernels")
        self.wrap(device_array.DeviceArray, "pulse_pair_signed", "device kernels")
        self.wrap(transfer.TransferCell, "_read", "transfer reads")
        return self

    def remove(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()


def split_step(profile: Path, rule: str, lr: float, gen: torch.Generator, steps: int) -> dict[str, float]:
    """Median ms per part of the torch step (``StepSplit``) and of the digital step (forward GEMM,
    periphery: d^T x and Adam, weight update), ``steps`` steps after 3 untimed ones."""
    x, _ = mnist_batch(gen)
    w = (torch.rand(500, IN, generator=gen) * 2 - 1) / IN**0.5
    d = layer_error(x, w, rule)
    xbar = Crossbar(IN, 500, device=profile, seed=0, engine="torch")
    xbar.set_weights(w)
    eng, tile_lr = xbar.engine, lr / xbar.w_scale
    adam, adam_dig, w_dig = Adam(tuple(w.shape), torch.device("cpu")), Adam(tuple(w.shape), torch.device("cpu")), w.clone()
    rows: dict[str, list[float]] = {k: [] for k in ("digital", "digital forward", "digital periphery", "torch",
                                                    *SPLIT_PARTS)}

    def torch_step(split: StepSplit | None) -> None:
        t0 = time.perf_counter()
        eng.forward(x, False)
        t1 = time.perf_counter()
        if rule == "adam":
            u = adam(d.T @ x)
            t2 = time.perf_counter()
            eng.update_rows(u, tile_lr)
        else:
            t2 = t1
            eng.update(x, d, tile_lr)
        t3 = time.perf_counter()
        if split is not None:
            rows["torch"].append(t3 - t0)
            rows["periphery"].append(t2 - t1)
            inside = sum(v for k, v in split.t.items() if k != "forward")
            split.t["rest of update"] = (t3 - t2) - inside
            for k in SPLIT_PARTS:
                if k != "periphery":
                    rows[k].append(split.t[k])
            split.t = dict.fromkeys(SPLIT_PARTS, 0.0)

    def digital_step() -> None:
        t0 = time.perf_counter()
        y = x @ w_dig.T
        t1 = time.perf_counter()
        g = d.T @ x
        w_dig.add_(adam_dig(g) if rule in ("adam", "onarray") else g, alpha=-lr if rule != "onarray" else -1e-3)
        t2 = time.perf_counter()
        rows["digital"].append(t2 - t0)
        rows["digital forward"].append(t1 - t0)
        rows["digital periphery"].append(t2 - t1)
        del y

    for _ in range(3):  # untimed: compilation or the package cache's load
        torch_step(None)
        digital_step()
    for k in ("digital", "digital forward", "digital periphery"):
        rows[k].clear()
    split = StepSplit().install()
    try:
        for _ in range(steps):
            split.t = dict.fromkeys(SPLIT_PARTS, 0.0)
            torch_step(split)
            digital_step()
    finally:
        split.remove()
    return {k: 1e3 * statistics.median(v) for k, v in rows.items()}


def pick_threads() -> int:
    """As many threads as the machine allows: all cores, unless other jobs hold them (then one
    thread is faster than threads that wait for busy cores). Decided on a 200 x 784 x 500 GEMM."""
    best, best_t = 1, float("inf")
    a, b = torch.rand(200, IN), torch.rand(IN, 500)
    for n in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(n)
        for _ in range(3):
            a @ b
        t = min(_timed(lambda: a @ b) for _ in range(20))
        if t < best_t * 0.9:
            best, best_t = n, t
    return best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fmt_rate(seconds: float) -> str:
    return f"{BATCH / seconds:,.0f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="widths 256 and 500, 2 profiles, few repeats")
    p.add_argument("--threads", type=int, default=None,
                   help="torch (and aihwkit OpenMP) threads; default: all cores unless busy, then 1")
    p.add_argument("--profile", default="reram_sb", help="profile of the width sweep (devices/NAME.toml)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds per measurement before fewer repeats are taken (default 15, quick 4)")
    p.add_argument("--widths", default=None, help="comma list of widths of the sweep ('' skips it)")
    p.add_argument("--profiles", default=None, help="comma list of profiles of the per-profile table (default all)")
    p.add_argument("--torch-device", default="cpu", help="where the torch engine and digital run: cpu | cuda")
    p.add_argument("--engines", default="torch,aihwkit", help="comma list; aihwkit runs on the CPU only")
    p.add_argument("--batches", type=int, default=1,
                   help="steps cycle through this many MNIST mini-batches (default 1: one batch and one update "
                        "direction repeated, so the weights drift one way)")
    p.add_argument("--split", action="store_true",
                   help="also print where the torch step's time goes, per profile (CPU; its own table)")
    args = p.parse_args(argv)
    device = torch.device(args.torch_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--torch-device {args.torch_device}: torch sees no CUDA GPU here")
    if args.batches < 1:
        p.error(f"--batches {args.batches}: at least 1")
    engines = [e for e in args.engines.split(",") if e]
    if not engines or set(engines) - {"torch", "aihwkit"}:
        p.error(f"--engines {args.engines!r}: a comma list of torch, aihwkit")
    threads = args.threads or pick_threads()
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    bind_analogff()
    from analogff.experiment import ExperimentConfig, keep_freed_memory

    keep_freed_memory()  # as the main job does (for every engine and the digital step alike)

    from analogff.experiment import analog_rule

    job = ExperimentConfig()

    def main_rule(prof: Path) -> tuple[str, float]:
        """The main job's update rule and lr on this profile ("auto": onarray on a transfer compound,
        else adam; the rule's default lr)."""
        return analog_rule(job, load_device(prof))

    widths = [256, 500] if args.quick else [256, 500, 1000, 2000]
    if args.widths is not None:
        try:
            widths = [int(w) for w in args.widths.split(",") if w]
        except ValueError:
            p.error(f"--widths {args.widths!r}: a comma list of integers ('' skips the width sweep)")
    repeats = args.repeats or (3 if args.quick else 5)
    budget = args.budget or (4.0 if args.quick else 15.0)
    available = list_devices(ROOT / "devices")
    profiles = available
    if args.quick:
        profiles = [q for q in profiles if q.stem in ("idealized", args.profile)]
    if args.profiles:
        wanted = [n for n in args.profiles.split(",") if n]
        unknown = sorted(set(wanted) - {q.stem for q in available})
        if unknown:
            p.error(f"--profiles: no devices/{unknown[0]}.toml (profiles: {', '.join(q.stem for q in available)})")
        profiles = [q for q in available if q.stem in wanted]
    gen = torch.Generator().manual_seed(0)
    sweep_profile = ROOT / "devices" / f"{args.profile}.toml"
    load_device(sweep_profile)

    where = "CPU" if device.type == "cpu" else f"{torch.cuda.get_device_name(device)} (aihwkit on the CPU)"
    print(f"# Engine speed: one analog FF step (forward of 2 x {BATCH} rows + one update), {where}\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), torch device {device}, ANALOGFF_COMPILE="
          f"{os.environ.get('ANALOGFF_COMPILE', 'auto')}; median of {repeats} steps; update rule of the main job "
          f"({job.analog_update}: per profile), "
          f"MNIST rows, {args.batches} mini-batch(es) in turn\n")

    def ms(r: dict, key: str) -> str:
        return f"{r[key] * 1e3:.1f}" if key in r else "-"

    def rate(r: dict, key: str) -> str:
        return fmt_rate(r[key]) if key in r else "-"

    def ratio(r: dict, slow: str, fast: str, digits: int = 0) -> str:
        return f"{r[slow] / r[fast]:.{digits}f}x" if slow in r and fast in r else "-"

    if widths:
        print(f"## Width sweep, {args.profile} ({IN} inputs; main job's update rule)\n")
        print("| width | digital samples/s | torch samples/s | aihwkit samples/s | torch / aihwkit | "
              "torch time / digital | torch in AnalogLayer samples/s | torch first step (compile), s |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for width in widths:
        rule, lr = main_rule(sweep_profile)
        r = bench_width(sweep_profile, IN, width, engines, repeats, budget, gen, crossbar="torch" in engines, batches=args.batches,
                        device=device, rule=rule, lr=lr)
        print(f"| {width} | {rate(r, 'digital')} | {rate(r, 'torch')} | {rate(r, 'aihwkit')} | "
              f"{ratio(r, 'aihwkit', 'torch')} | {ratio(r, 'torch', 'digital', 1)} | {rate(r, 'torch_xbar')} | "
              f"{r.get('torch_first', float('nan')):.1f} |", flush=True)

    print(f"\n## Every profile at {IN} x 500, two pulse densities\n")
    print(f"*main job*: the update rule and lr of the main job on each profile (adam, lr 1e-3: the periphery's "
          f"Adam step transferred row by row, the digital step with the same Adam; onarray, lr 0.01, on a transfer "
          f"compound: d^T x pulsed onto its fast array and the transfer, against digital FF's Adam step); *dense*: plain pulses "
          f"with the `normalized` rule at lr {DENSE_LR} (hundreds of pulses per device and step: aihwkit's "
          "seconds-long updates). ms per step; epoch = 600 steps of a 784-500-500 net on the torch engine "
          "(engine time only, main job).\n")
    print("| profile | preset | digital ms | pulses/device (main) | torch ms (main) | aihwkit ms (main) | "
          "torch / aihwkit (main) | pulses/device (dense) | torch ms (dense) | aihwkit ms (dense) | "
          "torch / aihwkit (dense) | torch time / digital | epoch s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for prof in profiles:
        rule, lr = main_rule(prof)
        r = bench_width(prof, IN, 500, engines, repeats, budget, gen, device=device, batches=args.batches,
                        rule=rule, lr=lr)
        rd = bench_width(prof, IN, 500, engines, repeats, budget, gen, rule="normalized", lr=DENSE_LR, device=device,
                         batches=args.batches)
        r2 = bench_width(prof, 500, 500, [e for e in engines if e == "torch"], repeats, budget, gen, device=device,
                         batches=args.batches, rule=rule, lr=lr)
        epoch = f"{600 * (r['torch'] + r2['torch']):.0f}" if "torch" in r else "-"
        print(f"| {prof.stem} | {load_device(prof).preset} | {ms(r, 'digital')} | "
              f"{r.get('pulses_per_device', float('nan')):.1f} | {ms(r, 'torch')} | {ms(r, 'aihwkit')} | "
              f"{ratio(r, 'aihwkit', 'torch')} | {rd.get('pulses_per_device', float('nan')):.0f} | {ms(rd, 'torch')} | "
              f"{ms(rd, 'aihwkit')} | {ratio(rd, 'aihwkit', 'torch')} | {ratio(r, 'torch', 'digital', 1)} | "
              f"{epoch} |", flush=True)
    if args.split:
        print(f"\n## Where the torch step's time goes ({IN} x 500, main job's rule), ms per step\n")
        print("Medians over the steps (each column's own median: the parts need not add up to the total). "
              "*periphery*: d^T x and Adam (the adam rule; 0 for onarray, whose d^T x is the pulses). "
              "Digital: its forward GEMM and its update (d^T x, Adam, W).\n")
        print("| profile | rule | digital ms (forward + update) | torch ms | torch / digital | "
              + " | ".join(SPLIT_PARTS) + " |")
        print("|---|---|---:|---:|---:|" + "---:|" * len(SPLIT_PARTS))
        for prof in profiles:
            rule, lr = main_rule(prof)
            r = split_step(prof, rule, lr, gen, max(repeats, 10))
            print(f"| {prof.stem} | {rule} | {r['digital']:.1f} ({r['digital forward']:.1f} + "
                  f"{r['digital periphery']:.1f}) | {r['torch']:.1f} | {r['torch'] / r['digital']:.1f}x | "
                  + " | ".join(f"{r[k]:.1f}" for k in SPLIT_PARTS) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
