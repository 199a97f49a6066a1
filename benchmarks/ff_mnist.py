"""Forward-Forward on the full real MNIST: a thin alias of ``analogff run --recipe ...``.

    python benchmarks/ff_mnist.py --quick              # = analogff run --recipe quick --methods digital_ff
    python benchmarks/ff_mnist.py                      # = analogff run --recipe full (digital FF, 60 epochs)
    python benchmarks/ff_mnist.py --recipe default --layer analog --device reram_es

The recipes are analogff/recipes.py's table (quick: one epoch of default; default: 10 epochs;
full: 60 epochs with shifts of up to 2 pixels). This script's older flags map onto the main
job's (--layer digital|analog -> --methods digital_ff|analog_ff, --dims 784,H1,H2 -> --hidden H1
H2, --train-samples -> --train-limit, --update -> --analog-update, --lr -> --ff.lr, --init-range ->
--ff.analog-init-range); any other flag of ``analogff run`` passes through. The run writes
results.json with energy (``--out``, default runs/ff_<recipe>_<layer>_s<seed>) and prints the
main job's table and the report's markdown row.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from analogff import cli  # noqa: E402
from analogff.recipes import RECIPES  # noqa: E402


def translate(argv: list[str] | None) -> tuple[list[str], argparse.Namespace]:
    """This script's flags -> ``analogff run`` flags (and the leftovers passed through)."""
    p = argparse.ArgumentParser(prog="ff_mnist.py", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="the quick recipe (overrides --recipe)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="full")
    p.add_argument("--layer", choices=("digital", "analog"), default="digital")
    p.add_argument("--dims", help="layer sizes, e.g. 784,1000,1000 (-> --hidden 1000 1000)")
    p.add_argument("--lr", help="FF learning rate (-> --ff.lr)")
    p.add_argument("--update", help="analog periphery update rule (-> --analog-update)")
    p.add_argument("--init-range", help="analog weight mapping (-> --ff.analog-init-range)")
    p.add_argument("--train-samples", help="train on the first N images (-> --train-limit)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--json", help="also copy the run's results.json here")
    p.add_argument("--checkpoint", help="(-> --out DIR: the run directory keeps the checkpoints)")
    p.add_argument("--eval-goodness-every", help="(ignored: the main job evaluates every epoch)")
    p.add_argument("--no-progress", action="store_true", help="(no-op: the bar shows on a terminal only)")
    p.add_argument("--torch-device", default="cpu", help="only cpu: the main job runs on the CPU")
    args, rest = p.parse_known_args(argv)
    if args.torch_device != "cpu":
        p.error(f"--torch-device {args.torch_device}: analogff run computes on the CPU; drop the flag")
    recipe = "quick" if args.quick else args.recipe
    out = ["--recipe", recipe, "--methods", f"{args.layer}_ff"]
    if args.dims:
        dims = [d for d in args.dims.split(",") if d.strip()]
        out += ["--hidden", *dims[1:]]
    for flag, value in (("--ff.lr", args.lr), ("--analog-update", args.update),
                        ("--ff.analog-init-range", args.init_range), ("--train-limit", args.train_samples)):
        if value is not None:
            out += [flag, value]
    if args.checkpoint and "--out" not in rest:
        out += ["--out", args.checkpoint]
    if "--drift-times" not in rest:
        out += ["--drift-times", ""]  # an accuracy benchmark: no drift evaluations
    if "--out" not in rest and not args.checkpoint:
        seed = rest[rest.index("--seed") + 1] if "--seed" in rest[:-1] else "0"
        out += ["--out", f"runs/ff_{recipe}_{args.layer}_s{seed}"]
    return out + rest, args


def main(argv: list[str] | None = None) -> int:
    run_argv, args = translate(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    print("# analogff run " + " ".join(repr(a) if a == "" else a for a in run_argv), flush=True)
    code = cli.run_main(run_argv, prog="ff_mnist.py")
    if code == 0:
        cfg = cli.run_configs(cli.run_parser().parse_args([*run_argv, "--resume"]))[0]
        res = Path(cfg.out) / "results.json"
        from analogff.report import accuracy_table, load

        print()
        print(accuracy_table([(res, load(res))]))
        if args.json:
            shutil.copyfile(res, args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())
