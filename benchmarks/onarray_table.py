"""The README's on-array learning table, from finished main-job runs of analog FF.

    python benchmarks/onarray_table.py docs/results/onarray/*

One row per run directory (results.json): the profile, the update rule it ran (``onarray``: the
transfer compound's own learning; ``adam``: the periphery's Adam; ``sgd``: plain pulses), test
accuracy by goodness and by the softmax head, training energy per sample and its top components,
programming pulses, the digital state the periphery keeps (and whether the residency rule put it in
SRAM or DRAM), and the training energy over the energy of the training forward passes. A training
sample runs three forward passes through every layer (the neutral pass for the head and the
negatives, the positive and the negative pass); the goodness readout runs ten (one per label), so
the forward energy of a training sample is taken as 3/10 of the goodness inference energy per sample
(same passes, same periphery).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RULES = {"onarray": "on-array", "adam": "periphery Adam", "sgd": "plain pulses", "momentum": "periphery momentum",
         "normalized": "normalized pulses"}


def row(path: Path) -> str | None:
    res = json.loads((path / "results.json").read_text())
    m = res["methods"].get("analog_ff")
    if m is None:
        return None
    train = m["train_energy_per_sample_J"]
    br = m["energy_breakdown_J"]
    total = sum(br.values()) or 1.0
    top = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(br.items(), key=lambda kv: -kv[1])[:3] if v > 0)
    rule = m.get("analog_update") or res["config"].get("analog_update")
    state = m.get("periphery_state_bytes", 0)
    where = "DRAM" if m["counters"].get("dram_bytes", 0) > 0 else "SRAM"
    fwd = 0.3 * m["inference_energy_per_sample_J"] if m.get("predict", "goodness") == "goodness" else None
    ratio = f"{train / fwd:.1f}x" if fwd else "-"
    epochs = len(m.get("epochs", [])) or res["config"].get("epochs")
    return (f"| {res['device_profile']['name']} | {RULES.get(rule, rule)} | {epochs} | "
            f"{100 * m['test_accuracy_goodness']:.2f} % / {100 * m['test_accuracy_softmax']:.2f} % | "
            f"{train * 1e6:.2f} uJ | {top} | {m['counters']['update_pulses'] / 1e9:.2f} G | "
            f"{state / 1e3:.0f} KB ({where}) | {ratio} | {m['wall_time_s'] / 60:.1f} min |"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories holding results.json")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "results.json").is_file()]
    if missing:
        p.error(f"no results.json in {missing[0]}")
    print("| profile | rule | epochs | test accuracy (goodness / head) | training energy / sample | "
          "top components | programming pulses | periphery state | training / forward energy | wall time |")
    print("|---|---|---:|---|---:|---|---:|---:|---:|---:|")
    for r in args.runs:
        line = row(r)
        if line:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
