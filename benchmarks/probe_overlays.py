"""Why the upper layers' probes fall in deep FF nets (issue #17, depth): hidden, or gone?

The main job's probes (analogff.probes) read each layer on a neutral-label pass, which an FF layer
never sees in training (its inputs always carry a one-hot label). If the upper layers kept the class
information and only the neutral label hid it, probes on other overlays would not fall. This script
loads a finished run's digital FF checkpoint (``RUN/state/digital_ff.ckpt``) and fits the same
linear probe (analogff.probes.fit_probe; 10,000 training images, the full test set) on each layer's
normalised activities under:

* ``neutral``: the main job's probe (every label pixel 0.1);
* ``zero``: no label at all (label pixels 0);
* ``mean10``: the mean of the ten labelled passes (label 0..9 at the label value), 10x the reads.

Test and training-set accuracy per layer: a training accuracy that falls as the test accuracy
does means the information is not there (not overfitting).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/probe_overlays.py RUN [RUN ...] \
        [--out benchmarks/results/probe_overlays_<commit>.txt]

Digital FF nets only (analysis: nothing is counted or billed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analogff.experiment import ExperimentConfig, _data, build_ff_net  # noqa: E402
from analogff.ff import FFNet, overlay_label, overlay_neutral  # noqa: E402
from analogff.options import config_from_dict  # noqa: E402
from analogff.probes import fit_probe  # noqa: E402

OVERLAYS = ("neutral", "zero", "mean10")


def load_digital_ff(run: Path) -> tuple[ExperimentConfig, FFNet, dict]:
    """The run's config, its trained digital FF net (the checkpoint's last epoch) and its data."""
    ck_path = run / "state" / "digital_ff.ckpt"
    if not ck_path.exists():
        raise SystemExit(f"{ck_path} not found: give a run directory whose digital_ff checkpoint was kept")
    conf = json.loads((run / "state" / "config.json").read_text())["config"]
    cfg = config_from_dict({**conf, "out": str(run)})
    ffcfg = replace(cfg.ff, lr=cfg.ff_lr_digital, seed=cfg.seed, engine=cfg.engine)
    data = _data(cfg)
    net = build_ff_net(cfg, ffcfg, data["train"][0].shape[1])
    net.load_state_dict(torch.load(ck_path, map_location="cpu", weights_only=False)["net"])
    return cfg, net.eval(), data


@torch.no_grad()
def features(net: FFNet, x: torch.Tensor, overlay: str, batch: int = 1000) -> list[torch.Tensor]:
    """Each layer's normalised activities (N, n_i) for images ``x`` under ``overlay``."""
    cfg = net.config
    k = cfg.num_classes

    def layers(inp: torch.Tensor) -> list[torch.Tensor]:
        return [net.normalize(i, h) for i, h in enumerate(net.activities(inp))]

    parts = []
    for s in range(0, x.shape[0], batch):
        xb = x[s:s + batch].float()
        if overlay == "neutral":
            f = layers(overlay_neutral(xb, k, cfg.neutral_value))
        elif overlay == "zero":
            f = layers(overlay_neutral(xb, k, 0.0))
        else:  # mean10
            runs = [layers(overlay_label(xb, torch.full((xb.shape[0],), c), k, cfg.label_value)) for c in range(k)]
            f = [sum(r[i] for r in runs) / k for i in range(len(runs[0]))]
        parts.append(f)
    return [torch.cat(col) for col in zip(*parts)]


def probe_table(run: Path, overlays: list[str], samples: int = 10000) -> str:
    cfg, net, data = load_digital_ff(run)
    xtr, ytr = data["train"][0][:samples], data["train"][1][:samples].long()
    xte, yte = data["test"][0], data["test"][1].long()
    lines = [f"{run}: {cfg.dataset}, hidden {cfg.hidden}, {cfg.epochs} epochs, norm {cfg.ff.norm}, "
             f"alpha {cfg.ff.alpha}, dropout {cfg.ff.dropout}, pairwise {cfg.ff.pairwise}"]
    for overlay in overlays:
        test, train = [], []
        for a, b in zip(features(net, xtr, overlay), features(net, xte, overlay)):
            p = fit_probe(a, ytr, cfg.ff.num_classes, seed=cfg.seed)
            with torch.no_grad():
                test.append(100 * float((p(b).argmax(1) == yte).float().mean()))
                train.append(100 * float((p(a).argmax(1) == ytr).float().mean()))
        fmt = lambda v: " ".join(f"{a:5.1f}" for a in v)  # noqa: E731
        lines.append(f"  {overlay:8s} test % {fmt(test)}   train % {fmt(train)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories with state/digital_ff.ckpt")
    ap.add_argument("--overlays", nargs="+", default=list(OVERLAYS), choices=OVERLAYS)
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    text = "\n".join([f"# benchmarks/probe_overlays.py, commit {commit}"] +
                     [probe_table(r, args.overlays) for r in args.runs]) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
