"""Mean update per device, aihwkit engine against torch engine, by pulse density.

Both engines get identical device-to-device parameters and weights (the aihwkit tile's hidden
parameters are loaded into the torch engine, as in ``tests/test_engine_fidelity.py``). Then one row-by-row
transfer of a uniform update (``u = sign``: every device gets the same expected pulse count) is
applied, ``--reps`` times from the same start, at each learning rate. The table prints the mean change
of the devices the pulses act on (the persistent weights under write noise), per engine, and the
aihwkit / torch ratio with its standard error (from the spread of the per-repeat means: cycle-to-cycle
noise makes a ratio from few repeats scatter by percents). With a PCM pair (``hidden_weights_0/1``),
``u = +1`` pulses device 0 (G-).

``--tiles N`` runs aihwkit on N freshly built tiles (the same device-to-device draws) and prints each
tile's ratio. aihwkit's CPU generator takes every Gaussian from a table of 32768 numbers drawn once
per tile from the clock, so a tile's cycle-to-cycle noise has a mean of its own (std
1/sqrt(32768)): on the noisy presets (``dw_min_std`` 3.75 to 5 steps) that moves a tile's mean update
by a few percent, the same for all its repeats. The torch engine draws fresh numbers.

Usage: ``python benchmarks/update_ratio.py --device pcm [--lrs 0.002,0.01,0.05,0.2] [--reps 20] [--tiles 8]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# aihwkit's CPU generator (rpucuda/rng.h, FIXED_LIST_SIZE) draws every Gaussian from a table of
# 32768 numbers made once per tile from the clock: the table's mean, std 1 / sqrt(32768), biases all
# the tile's cycle-to-cycle noise, so its mean update is off by about dw_min_std times that
_GAUSS_TABLE = 32768


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="pcm", help="profile name in devices/")
    p.add_argument("--lrs", default="0.002,0.01,0.05,0.2", help="comma list of tile learning rates")
    p.add_argument("--reps", type=int, default=20, help="repeats from the same start per lr")
    p.add_argument("--size", default="64,32", help="tile rows (inputs), columns (outputs)")
    p.add_argument("--w0", type=float, default=0.05, help="start weight of every device (tile units)")
    p.add_argument("--tiles", type=int, default=1,
                   help="fresh aihwkit tiles (same device draws, each its own clock-seeded Gaussian table)")
    args = p.parse_args(argv)
    path = ROOT / "devices" / f"{args.device}.toml"
    if not path.is_file():
        p.error(f"--device: no {path.relative_to(ROOT)}")
    try:
        lrs = [float(v) for v in args.lrs.split(",") if v]
        n_in, n_out = (int(v) for v in args.size.split(","))
    except ValueError:
        p.error("--lrs: a comma list of numbers; --size: two integers")
    if args.tiles < 1 or args.reps < 2:
        p.error("--tiles: at least 1; --reps: at least 2 (the SE needs a spread)")

    from analogff.crossbar import AihwkitEngine
    from analogff.devices import load_device
    from analogff.engine import TorchPulsedEngine

    def aihwkit_tile() -> AihwkitEngine:
        e = AihwkitEngine(n_in, n_out, load_device(path).rpu_config(), 0)  # seed 0: same device-to-device draws
        e.set_weights(torch.zeros(n_out, n_in))
        return e

    tiles = [aihwkit_tile() for _ in range(args.tiles)]
    t = TorchPulsedEngine(n_in, n_out, load_device(path).rpu_config(), 0)
    t.load_device_state(tiles[0].device_state(), weights=tiles[0].get_weights())
    w0 = torch.full((n_out, n_in), args.w0)
    state = tiles[0].device_state()  # what the pulses act on: G- of a PCM pair, the persistent weights
    key = next((k for k in ("hidden_weights_0", "persistent_weights") if k in state), None)  # under write noise

    def hidden(e) -> torch.Tensor:
        return e.device_state()[key] if key else e.get_weights()

    def rep_means(e, lr: float) -> torch.Tensor:
        means = []
        for _ in range(args.reps):
            e.set_weights(w0)
            h0 = hidden(e)
            u = torch.ones(n_out, n_in) * (1.0 if key == "hidden_weights_0" else -1.0)  # PCM: G- up; else w up
            if e is t:
                e.update_rows(u, lr)
            else:
                e.update(torch.eye(n_in), u.T, lr)
            means.append(float((hidden(e) - h0).mean()))
        return torch.tensor(means, dtype=torch.float64)

    c2c = float(getattr(load_device(path).rpu_config().device, "dw_min_std", 0.0) or 0.0)
    print(f"# {args.device}: mean change per device of one row-by-row transfer of u = 1, "
          f"{n_in} x {n_out} tile, {args.reps} repeats per engine"
          + (f" and per each of {args.tiles} fresh aihwkit tiles" if args.tiles > 1 else "") + "\n")
    head = "| lr | aihwkit | torch | aihwkit / torch | SE of the ratio |"
    rule = "|---:|---:|---:|---:|---:|"
    if args.tiles > 1:
        head += " per-tile ratios | their std | aihwkit table bias, std |"
        rule += "---|---:|---:|"
    print(head + "\n" + rule)
    for lr in lrs:
        tm = rep_means(t, lr)
        mt, st = float(tm.mean()), float(tm.std() / args.reps**0.5)
        per_tile = [rep_means(a, lr) for a in tiles]
        am = torch.cat(per_tile)
        ma, sa = float(am.mean()), float(am.std() / am.numel()**0.5)
        if not mt:
            print(f"| {lr:g} | {ma:.5f} | {mt:.5f} | - (no change: below a transfer threshold?) | - |", flush=True)
            continue
        r = ma / mt
        # delta method: relative errors of two independent means add in quadrature. Across tiles the
        # per-repeat means are not independent (each tile's Gaussian table biases all its repeats):
        # the per-tile spread below shows that
        r_se = abs(r) * ((sa / ma) ** 2 + (st / mt) ** 2) ** 0.5
        row = f"| {lr:g} | {ma:.5f} | {mt:.5f} | {r:.3f} | {r_se:.3f} |"
        if args.tiles > 1:
            ratios = torch.tensor([float(m.mean()) / mt for m in per_tile], dtype=torch.float64)
            row += (" " + " ".join(f"{v:.3f}" for v in ratios) + f" | {float(ratios.std()):.3f} | "
                    f"{c2c / _GAUSS_TABLE**0.5:.3f} |")
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
