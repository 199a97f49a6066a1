"""Why the FF goodness readout loses accuracy on analog arrays (issue #17 part 3), measured.

Trains (or loads the checkpoints of) the main job's digital and analog FF (784-500-500, 3 epochs,
device ecram, seed 0) on Fashion-MNIST and MNIST with ``analogff.experiment.run_one``, then
evaluates the goodness readout of the trained nets on the full test set with one non-ideality of
the forward read switched off at a time:

* the analog-trained weights read digitally (exact ``W x + b``: no DAC, ADC, noise, clipping);
* array reads without output noise (all layers, or one layer at a time);
* without DAC/ADC quantisation, without the ADC bound (no clipping, no bound-management retries);
* the digital-trained weights programmed onto the array and read with all of it;
* ``goodness_from`` 0 or 1 (which layers the goodness sums);
* the readouts of :meth:`analogff.ff.FFNet.goodness_per_label` (``FFConfig.label_readout``).

Also per net: the relative goodness margin (best minus second best over best), the rate at which
the noisy reads flip the noise-free decision, and the bound-management retry rate.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/readout.py --runs runs/readout \
        [--datasets fashion_mnist mnist] [--out benchmarks/results/readout_<commit>.txt]

A run directory per dataset (``RUNS_<dataset>``) holds the main job's results.json and checkpoints;
existing checkpoints are reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analogff.experiment import ExperimentConfig, _data, _profile, analog_rule, run_one  # noqa: E402
from analogff.energy import EnergyModel, measured  # noqa: E402
from analogff.ff import FFNet, overlay_label  # noqa: E402
from analogff.layers import AnalogLayer  # noqa: E402


# -- the trained nets ------------------------------------------------------------------------
def main_job_config(dataset: str, out: Path, threads: int = 1) -> ExperimentConfig:
    """The main job's config (defaults) with FF methods only, on ``dataset``, written to ``out``."""
    return ExperimentConfig(dataset=dataset, methods=["analog_ff", "digital_ff"], out=str(out), threads=threads)


def train_or_load(cfg: ExperimentConfig) -> dict:
    """results.json of the main job in ``cfg.out`` (run it if missing: minutes)."""
    res = Path(cfg.out) / "results.json"
    if not res.exists():
        run_one(cfg, resume=True if (Path(cfg.out) / "state").exists() else False)
    return json.loads(res.read_text())


def build_net(cfg: ExperimentConfig, method: str, profile, **ff_overrides) -> FFNet:
    """An untrained FFNet of ``method`` exactly as ``_run_ff`` builds it (``ff_overrides``: FFConfig fields)."""
    analog = method == "analog_ff"
    rule, lr = analog_rule(cfg, profile) if analog else (cfg.analog_update, cfg.ff_lr_digital)
    ffcfg = replace(cfg.ff, lr=lr, seed=cfg.seed, engine=cfg.engine, analog_update=rule, **ff_overrides)
    return FFNet([784, *cfg.hidden], layer="analog" if analog else "digital", device=profile if analog else None,
                 config=ffcfg)


def load_net(cfg: ExperimentConfig, method: str, profile, **ff_overrides) -> FFNet:
    """The trained net of ``method`` from its checkpoint (the last epoch's state)."""
    net = build_net(cfg, method, profile, **ff_overrides)
    ck = torch.load(Path(cfg.out) / "state" / f"{method}.ckpt", map_location="cpu", weights_only=False)
    net.load_state_dict(ck["net"])
    return net.eval()


def analog_layers(net: FFNet) -> list[AnalogLayer]:
    return [lay for lay in net.layers if isinstance(lay, AnalogLayer)]


# -- ablations (context managers on a trained analog net) --------------------------------------
@contextlib.contextmanager
def io_override(net: FFNet, layers: list[int] | None = None, **fields) -> Iterator[None]:
    """The forward io parameters (aihwkit ``forward.*``) of the chosen analog layers set to ``fields``."""
    saved = []
    for i, lay in enumerate(net.layers):
        if isinstance(lay, AnalogLayer) and (layers is None or i in layers):
            io_pars = lay.xbar.engine.f_io
            saved.append((io_pars, {k: getattr(io_pars, k) for k in fields}))
            for k, v in fields.items():
                setattr(io_pars, k, v)
    try:
        yield
    finally:
        for io_pars, old in saved:
            for k, v in old.items():
                setattr(io_pars, k, v)


def no_clipping(net: FFNet) -> contextlib.AbstractContextManager:
    """ADC bound raised 1000x with the same ADC step (no clipping, no bound-management retries)."""
    io0 = analog_layers(net)[0].xbar.engine.f_io
    from aihwkit.simulator.parameters.enums import BoundManagementType

    return io_override(net, out_bound=io0.out_bound * 1000, out_res=io0.out_res / 1000,
                       bound_management=BoundManagementType.NONE)


@contextlib.contextmanager
def digital_read(net: FFNet, layers: list[int] | None = None) -> Iterator[None]:
    """The chosen analog layers compute the exact ``rows @ W^T`` of their stored weights."""
    patched = []
    for i, lay in enumerate(net.layers):
        if isinstance(lay, AnalogLayer) and (layers is None or i in layers):
            w = lay.xbar.get_weights()
            lay.xbar.forward = (lambda w: lambda v: v @ w.t())(w)
            patched.append(lay.xbar)
    try:
        yield
    finally:
        for xb in patched:
            del xb.forward


def program_digital(cfg: ExperimentConfig, profile, digital: FFNet, fit: bool) -> FFNet:
    """The digital net's trained weights programmed onto a fresh analog net (exact set_weights).
    ``fit``: each crossbar's w_scale chosen so the largest weight sits at 95 % of the device bound
    (else the analog net's own w_scale, weights beyond the bound clipped)."""
    net = build_net(cfg, "analog_ff", profile)
    net.load_state_dict({k: v for k, v in digital.state_dict().items() if k.startswith(("head.", "bn_"))},
                        strict=False)
    for dl, al in zip(digital.layers, net.layers):
        w = torch.cat([dl.linear.weight, dl.linear.bias[:, None]], 1).detach()
        if fit:
            al.xbar.w_scale = float(w.abs().max()) / (0.95 * al.xbar.w_bound)
        al.xbar.set_weights(w)
    return net.eval()


# -- measurements -------------------------------------------------------------------------------
def scores(net: FFNet, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, classes) goodness per label on x."""
    with torch.no_grad():
        return torch.cat([net.goodness_per_label(x[s:s + batch]) for s in range(0, x.shape[0], batch)])


def margin(s: torch.Tensor) -> float:
    """Median relative goodness margin: (best - second best) / best."""
    top = s.topk(2, 1).values
    return float(((top[:, 0] - top[:, 1]) / top[:, 0].clamp_min(1e-12)).median())


class Table:
    """Rows of (condition, accuracy %, notes), printed aligned."""

    def __init__(self, title: str):
        self.title, self.rows = title, []

    def add(self, name: str, acc: float | None, note: str = "") -> None:
        self.rows.append((name, acc, note))
        print(f"  {name:58s} {'' if acc is None else f'{100 * acc:6.2f} %'}  {note}", flush=True)

    def text(self) -> str:
        lines = [self.title]
        lines += [f"  {n:58s} {'' if a is None else f'{100 * a:6.2f} %'}  {note}".rstrip() for n, a, note in self.rows]
        return "\n".join(lines)


def evaluate_dataset(dataset: str, runs: Path, readouts: list[str], seeds: int = 3) -> str:
    cfg = main_job_config(dataset, Path(f"{runs}_{dataset}"))
    results = train_or_load(cfg)
    profile = _profile(cfg)
    data = _data(cfg)
    x, y = data["test"]
    x = x.float()
    n = x.shape[0]
    m = results["methods"]
    title = (f"== {dataset}: main job (784-500-500, 3 epochs, ecram, seed 0), full test set N={n}; "
             f"main job's own numbers: analog FF goodness {100 * m['analog_ff']['test_accuracy_goodness']:.2f} % "
             f"head {100 * m['analog_ff']['test_accuracy_softmax']:.2f} %, digital FF goodness "
             f"{100 * m['digital_ff']['test_accuracy_goodness']:.2f} % head "
             f"{100 * m['digital_ff']['test_accuracy_softmax']:.2f} %")
    print(title, flush=True)
    t = Table(title)
    acc = lambda net, method="goodness": net.accuracy(x, y, method)  # noqa: E731

    dig = load_net(cfg, "digital_ff", profile)
    s_dig = scores(dig, x)
    t.add("digital FF, goodness", float((s_dig.argmax(1) == y).float().mean()),
          f"median margin {margin(s_dig):.4f}")
    t.add("digital FF, head", acc(dig, "softmax"))
    ana = load_net(cfg, "analog_ff", profile)
    torch.manual_seed(0)
    s_arr = scores(ana, x)
    with digital_read(ana):
        s_exact = scores(ana, x)
    flip = float((s_arr.argmax(1) != s_exact.argmax(1)).float().mean())
    t.add("analog FF, goodness, array read (as in the main job)", float((s_arr.argmax(1) == y).float().mean()),
          f"flips vs exact read {100 * flip:.1f} %")
    rel_noise = float(((s_arr - s_exact).abs() / s_exact.abs().clamp_min(1e-12)).median())
    top = s_exact.topk(2, 1).values
    rel_margin = (top[:, 0] - top[:, 1]) / top[:, 0].clamp_min(1e-12)
    t.add("analog FF: median |G_array - G_exact| / G_exact; samples with margin below it", None,
          f"{rel_noise:.4f}; {100 * float((rel_margin < rel_noise).float().mean()):.1f} %")
    t.add("analog FF, head, array read", acc(ana, "softmax"))
    t.add("analog FF weights read digitally (exact W x + b), goodness",
          float((s_exact.argmax(1) == y).float().mean()), f"median margin {margin(s_exact):.4f}")
    with digital_read(ana):
        t.add("analog FF weights read digitally, head", acc(ana, "softmax"))
    for what, ctx in [
        ("array read, output noise 0 (all layers)", lambda: io_override(ana, out_noise=0.0)),
        ("array read, output noise 0 in layer 0 only", lambda: io_override(ana, [0], out_noise=0.0)),
        ("array read, output noise 0 in layer 1 only", lambda: io_override(ana, [1], out_noise=0.0)),
        ("array read, layer 0 exact, layer 1 array", lambda: digital_read(ana, [0])),
        ("array read, layer 0 array, layer 1 exact", lambda: digital_read(ana, [1])),
        ("array read, no DAC/ADC quantisation", lambda: io_override(ana, inp_res=0.0, out_res=0.0)),
        ("array read, no DAC quantisation", lambda: io_override(ana, inp_res=0.0)),
        ("array read, no ADC clipping / bound management", lambda: no_clipping(ana)),
        ("array read, noise 0 and no quantisation/clipping", lambda: _stack(
            io_override(ana, out_noise=0.0, inp_res=0.0), no_clipping(ana))),
    ]:
        with ctx():
            t.add(what + ", goodness", acc(ana))
    # bound-management retries of one goodness evaluation
    xb = [lay.xbar for lay in analog_layers(ana)]
    m0 = [c.counters.mvms for c in xb]
    scores(ana, x)
    vec = 10 * n
    t.add("bound-management retry passes per vector (layer 0, layer 1)", None,
          ", ".join(f"{(c.counters.mvms - a - vec) / vec:.4f}" for c, a in zip(xb, m0)))
    # which layers the goodness sums
    for gf in (0, 1):
        a_gf = load_net(cfg, "analog_ff", profile, goodness_from=gf)
        d_gf = load_net(cfg, "digital_ff", profile, goodness_from=gf)
        t.add(f"goodness_from={gf}: digital FF / analog FF array read", acc(a_gf),
              f"digital {100 * acc(d_gf):.2f} %")
    # digital weights on the array
    for fit in (False, True):
        prog = program_digital(cfg, profile, dig, fit)
        t.add(f"digital FF weights programmed onto the array ({'w_scale fitted' if fit else 'analog w_scale, clipped'})"
              ", goodness", acc(prog), f"head {100 * acc(prog, 'softmax'):.2f} %; w_scale "
              + ", ".join(f"{lay.xbar.w_scale:.3g}" for lay in prog.layers))
    # why the differential read helps: the abs-max that scales a read's noise, full trial vs difference
    t.add("layer-1 reads: median abs-max of a trial's input / of its difference from the trials' mean", None,
          _drive_ranges(ana, x[:1000]))
    # the readouts of FFNet.goodness_per_label: accuracy (mean and range over eval seeds), counts, energy
    model = EnergyModel.from_profile(profile)
    for ro in readouts:
        for kind in ("analog_ff", "digital_ff"):
            for extra in ({}, {"goodness_from": 0}, *([{"label_reads": 1}] if ro != "overlay" else [])):
                if extra and kind == "digital_ff":
                    continue
                accs = []
                for seed in (range(seeds) if kind == "analog_ff" else range(1)):
                    net = load_net(cfg, kind, profile, label_readout=ro, **extra)
                    reseed(net, seed)
                    with measured(net) as inf:
                        accs.append(acc(net))
                c = inf.counts.scaled(1 / n)
                e = (model if kind == "analog_ff" else EnergyModel()).energy(inf.counts).per_sample(n).total_J
                spread = f" (seeds {min(accs) * 100:.2f}..{max(accs) * 100:.2f})" if len(accs) > 1 else ""
                t.add(f"label_readout={ro!r}{''.join(f', {k}={v}' for k, v in extra.items())}: {kind}, goodness",
                      sum(accs) / len(accs),
                      f"{spread} per sample: MVMs {c.mvms:.2f}, DAC {c.dac_conversions:.0f}, ADC "
                      f"{c.adc_conversions:.0f}, digital MACs {c.digital_macs:.0f}, ops {c.digital_ops:.0f}; "
                      f"{e * 1e9:.2f} nJ")
    end = Path(f"{runs}_diff_{dataset}") / "results.json"  # the main job with the fix, end to end
    if end.exists():
        e = json.loads(end.read_text())["methods"]["analog_ff"]
        t.add("main job --ff.label-readout differential (trained and evaluated so), analog FF goodness",
              e["test_accuracy_goodness"], f"head {100 * e['test_accuracy_softmax']:.2f} %; inference "
              f"{e['inference_energy_per_sample_J'] * 1e9:.2f} nJ/sample (main job: "
              f"{m['analog_ff']['inference_energy_per_sample_J'] * 1e9:.2f} nJ/sample, {m['analog_ff']['predict']})")
    return t.text()


def reseed(net: FFNet, seed: int) -> None:
    """Restart the read-noise streams of every crossbar of net from ``seed`` (an evaluation seed)."""
    for i, lay in enumerate(analog_layers(net)):
        lay.xbar.engine.rng.cpu.manual_seed(1_000_003 * seed + i)


def _drive_ranges(net: FFNet, x: torch.Tensor) -> str:
    """Median over trials of max|u_c| and of max|u_c - mean_c u_c| for the second layer's inputs."""
    k = net.config.num_classes
    b = x.shape[0]
    labels = torch.arange(k).repeat_interleave(b)
    with digital_read(net):
        h0 = net.activities(overlay_label(x.repeat(k, 1), labels, k, net.config.label_value))[0]
    u = net.normalize(0, h0).view(k, b, -1) * net.layers[1].input_gain
    full = u.abs().amax(2).median()
    diff = (u - u.mean(0, keepdim=True)).abs().amax(2).median()
    return f"{float(full):.2f} / {float(diff):.2f} (ratio {float(diff / full):.3f})"


def _stack(*cms) -> contextlib.ExitStack:
    st = contextlib.ExitStack()
    for cm in cms:
        st.enter_context(cm)
    return st


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/readout", help="run directories RUNS_<dataset>")
    ap.add_argument("--datasets", nargs="+", default=["fashion_mnist", "mnist"])
    ap.add_argument("--readouts", nargs="*", default=None, help="FFConfig.label_readout values (default: all)")
    ap.add_argument("--seeds", type=int, default=3, help="evaluation seeds of the analog readouts")
    ap.add_argument("--out", default=None, help="write the tables here too")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    import analogff.ff as ff

    readouts = list(getattr(ff, "LABEL_READOUTS", ())) if args.readouts is None else args.readouts
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    t0 = time.perf_counter()
    texts = [evaluate_dataset(d, Path(args.runs), readouts, args.seeds) for d in args.datasets]
    out = "\n\n".join([f"benchmarks/readout.py at {commit}, {time.perf_counter() - t0:.0f} s", *texts]) + "\n"
    if args.out:
        Path(args.out).write_text(out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
