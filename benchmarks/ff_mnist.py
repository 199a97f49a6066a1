"""Forward-Forward on the full real MNIST: train, evaluate, print a markdown table.

    python benchmarks/ff_mnist.py --quick              # 784-500-500, 1 epoch (a minute on 1 core)
    python benchmarks/ff_mnist.py                      # the full digital recipe (see RECIPES)
    python benchmarks/ff_mnist.py --recipe default --epochs 5
    python benchmarks/ff_mnist.py --layer analog --device devices/reram_es.toml --quick --update normalized

The table (method, device profile, layers, epochs, test accuracy by goodness and by the softmax head,
wall time) is markdown, ready to paste into the README. ``--json PATH`` also writes the history.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analogff.devices import load_device  # noqa: E402
from analogff.experiment import keep_freed_memory  # noqa: E402
from analogff.ff import ANALOG_UPDATES, FFConfig, FFNet, load_mnist_data, train_ff  # noqa: E402

# name -> (dims, epochs, batch size, config). "default" is FFConfig() on the main job's net.
RECIPES = {
    "default": ([784, 500, 500], 10, 100, FFConfig()),
    "full": ([784, 500, 500], 60, 100, FFConfig(shift=2)),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="784-500-500, 1 epoch (overrides --recipe)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="full")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--dims", help="override the layer sizes, e.g. 784,1000,1000")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="override the FF layers' learning rate")
    p.add_argument("--layer", choices=("digital", "analog"), default="digital")
    p.add_argument("--device", help="device profile TOML for --layer analog, e.g. devices/reram_es.toml")
    p.add_argument("--update", choices=ANALOG_UPDATES, default=FFConfig.analog_update,
                   help="analog periphery update rule")
    p.add_argument("--engine", default="torch", help="crossbar engine for --layer analog")
    p.add_argument("--init-range", type=float, help="analog weight mapping (default: the profile's [mapping] init_range)")
    p.add_argument("--train-samples", type=int, help="train on the first N training images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--checkpoint", help="checkpoint file (written after every epoch)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--eval-goodness-every", type=int, default=1)
    p.add_argument("--json", help="write the configuration and per-epoch history here")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--torch-device", default="cpu", help="where torch computes: cpu | cuda | cuda:N")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the main job does
    name = "quick" if args.quick else args.recipe
    dims, epochs, batch_size, cfg = RECIPES["default" if args.quick else args.recipe]
    epochs = 1 if args.quick and args.epochs is None else (args.epochs or epochs)
    dims = [int(v) for v in args.dims.split(",")] if args.dims else dims
    batch_size = args.batch_size or batch_size
    cfg = replace(cfg, seed=args.seed)
    if args.lr is not None:
        cfg = replace(cfg, lr=args.lr)
    if args.layer == "analog":
        if not args.device:
            p.error("--layer analog needs --device devices/<profile>.toml")
        try:  # a bad option or profile: one line naming it, before any work
            cfg = replace(cfg, analog_update=args.update, engine=args.engine, analog_init_range=args.init_range)
            load_device(args.device)
        except ValueError as exc:  # DeviceProfileError is a ValueError
            p.error(str(exc))
    if args.torch_device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--torch-device {args.torch_device}: torch sees no CUDA GPU here; use --torch-device cpu")

    data = load_mnist_data()
    if args.train_samples:
        x, y = data["train"]
        data["train"] = (x[:args.train_samples], y[:args.train_samples])
    net = FFNet(dims, layer=args.layer, device=args.device, config=cfg).to(args.torch_device)
    print(f"# FF on MNIST: recipe {name}, dims {dims}, {epochs} epochs, batch {batch_size}, "
          f"{args.layer} layers{' on ' + args.device if args.device else ''}, seed {args.seed}, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}, torch device {_device_name(args.torch_device)}",
          flush=True)
    print(f"# {cfg}", flush=True)
    t0 = time.perf_counter()
    hist = train_ff(net, data, epochs=epochs, batch_size=batch_size, seed=args.seed,
                    checkpoint=args.checkpoint, resume=args.resume, progress=not args.no_progress,
                    eval_goodness_every=args.eval_goodness_every,
                    on_epoch=_print_epoch if args.no_progress else None)
    wall = hist[-1]["wall_time_s"] if hist else time.perf_counter() - t0

    last = hist[-1]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    method = f"FF {cfg.loss}, {cfg.negatives} negatives, {cfg.norm} norm"
    if args.layer == "analog":
        method += f", analog {cfg.analog_update} update"
    else:
        method += f", {cfg.optimizer}"
    if args.train_samples:
        method += f" ({args.train_samples} training images)"
    profile = Path(args.device).stem if args.device else "digital (fp32)"
    print()
    print("| method | device profile | layers | epochs | test acc (goodness) | test acc (softmax head) | wall time |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {method} | {profile} | {'-'.join(map(str, dims))} | {last['epoch']} | "
          f"{pct(last['test_acc_goodness'])} | {pct(last['test_acc_softmax'])} | {wall / 60:.1f} min |")
    counts = net.total_counts()
    print(f"\nops: digital MACs {counts.digital_macs:.3e}, analog MVMs {counts.mvms:.3e}, "
          f"update pulses {counts.update_pulses:.3e}, periphery state {net.periphery_state_bytes} B")
    if args.json:
        Path(args.json).write_text(json.dumps({"recipe": name, "dims": dims, "epochs": epochs,
                                               "batch_size": batch_size, "seed": args.seed,
                                               "layer": args.layer, "device": args.device,
                                               "config": asdict(cfg), "history": hist,
                                               "counts": counts.as_dict()}, indent=1))
    return 0


def _device_name(dev: str) -> str:
    return torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else "cpu"


def _print_epoch(m: dict) -> None:
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    print(f"epoch {m['epoch']}: loss {m['train_loss']:.4f}, test acc goodness {pct(m['test_acc_goodness'])}, "
          f"softmax {pct(m['test_acc_softmax'])}, {m['wall_time_s']:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
