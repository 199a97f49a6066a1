"""Mean update per device, aihwkit engine against torch engine, by pulse density.

Both engines get identical device-to-device parameters and weights (the aihwkit tile's hidden
parameters are loaded into the torch engine, as in ``tests/test_pulsed.py``). Then one row-by-row
transfer of a uniform update (``u = sign``: every device gets the same expected pulse count) is
applied, ``--reps`` times from the same start, at each learning rate. The table prints the mean change
of the devices the pulses act on (the persistent weights under write noise), per engine, and the
aihwkit / torch ratio. With a PCM pair (``hidden_weights_0/1``), ``u = +1`` pulses device 0 (G-).

Usage: ``python benchmarks/update_ratio.py --device pcm [--lrs 0.002,0.01,0.05,0.2] [--reps 20]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="pcm", help="profile name in devices/")
    p.add_argument("--lrs", default="0.002,0.01,0.05,0.2", help="comma list of tile learning rates")
    p.add_argument("--reps", type=int, default=20, help="repeats from the same start per lr")
    p.add_argument("--size", default="64,32", help="tile rows (inputs), columns (outputs)")
    p.add_argument("--w0", type=float, default=0.05, help="start weight of every device (tile units)")
    args = p.parse_args(argv)
    path = ROOT / "devices" / f"{args.device}.toml"
    if not path.is_file():
        p.error(f"--device: no {path.relative_to(ROOT)}")
    try:
        lrs = [float(v) for v in args.lrs.split(",") if v]
        n_in, n_out = (int(v) for v in args.size.split(","))
    except ValueError:
        p.error("--lrs: a comma list of numbers; --size: two integers")

    from analogff.crossbar import AihwkitEngine
    from analogff.devices import load_device
    from analogff.pulsed import TorchPulsedEngine

    a = AihwkitEngine(n_in, n_out, load_device(path).rpu_config(), 0)
    t = TorchPulsedEngine(n_in, n_out, load_device(path).rpu_config(), 0)
    a.set_weights(torch.zeros(n_out, n_in))
    t.load_device_state(a.device_state(), weights=a.get_weights())
    w0 = torch.full((n_out, n_in), args.w0)
    state = a.device_state()  # what the pulses act on: G- of a PCM pair, the persistent weights
    key = next((k for k in ("hidden_weights_0", "persistent_weights") if k in state), None)  # under write noise

    def hidden(e) -> torch.Tensor:
        return e.device_state()[key] if key else e.get_weights()

    print(f"# {args.device}: mean change per device of one row-by-row transfer of u = 1, "
          f"{n_in} x {n_out} tile, {args.reps} repeats\n")
    print("| lr | aihwkit | torch | aihwkit / torch |\n|---:|---:|---:|---:|")
    for lr in lrs:
        res = {}
        for name, e in (("aihwkit", a), ("torch", t)):
            total = 0.0
            for _ in range(args.reps):
                e.set_weights(w0)
                h0 = hidden(e)
                u = torch.ones(n_out, n_in) * (1.0 if key == "hidden_weights_0" else -1.0)  # PCM: G- up; else w up
                if name == "torch":
                    e.update_rows(u, lr)
                else:
                    e.update(torch.eye(n_in), u.T, lr)
                total += float((hidden(e) - h0).mean())
            res[name] = total / args.reps
        ratio = f"{res['aihwkit'] / res['torch']:.3f}" if res["torch"] else "- (no change: below a transfer threshold?)"
        print(f"| {lr:g} | {res['aihwkit']:.5f} | {res['torch']:.5f} | {ratio} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
