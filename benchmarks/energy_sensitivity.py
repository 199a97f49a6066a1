"""How the FF-versus-BP energy comparison moves with the energy model's uncertain choices.

Reads one run's results.json (its training and inference counters; no retraining) and reprices
them with the ADC point (min, p10, median of the Murmann survey), the ADC resolution, and the SRAM
capacity. A capacity change also moves each method's resident state between SRAM and DRAM by the
one residency rule (analogff.accounting.state_in_dram): the state's traffic is the run's DRAM
traffic when the run had it in DRAM; a run whose state fitted SRAM keeps its residency (said in
the output). Accuracy does not change with these prices; fewer ADC bits would change accuracy too,
which this table does not model (see the ADC-bits sweep in the README for that).

    .venv/bin/python benchmarks/energy_sensitivity.py runs/main_s0 --out docs

writes ``docs/energy_sensitivity.md`` (a markdown table) and ``docs/figures/energy_sensitivity.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analogff.accounting import state_in_dram  # noqa: E402
from analogff.energy import EnergyConstants, EnergyModel, OpCounts  # noqa: E402

ADC_POINTS = ("min", "p10", "median")
ADC_BITS = (6, 7, 8, 9, 10)
SRAM_CAPACITIES = (256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20)


def _counts(d: dict[str, Any]) -> OpCounts:
    known = set(OpCounts().as_dict())
    return OpCounts(**{k: v for k, v in d.items() if k in known})


def _move_resident(c: OpCounts, resident: int, capacity: int, run_capacity: int) -> tuple[OpCounts, bool]:
    """Counts with the resident state placed by the rule at ``capacity``; returns (counts, exact)."""
    was, now = state_in_dram(resident, run_capacity), state_in_dram(resident, capacity)
    if was == now:
        return c, True
    out = c.copy()
    if was and not now:  # the state's DRAM traffic moves on chip
        out.sram_bytes, out.dram_bytes = c.sram_bytes + c.dram_bytes, 0
        return out, True
    return c, False  # the state fitted the run's SRAM: its share of the SRAM traffic is not known


def bill(results: dict[str, Any], method: str, adc_point: str | None = None, adc_bits: int | None = None,
         sram_capacity: int | None = None) -> dict[str, Any]:
    """Training and inference energy per sample of ``method`` under the given choices."""
    m = results["methods"][method]
    saved = results["energy_model"]["analog" if method.startswith("analog") else "digital"]
    over: dict[str, Any] = {}
    if adc_point is not None:
        over["adc_point"] = adc_point
    run_cap = saved["constants"].get("sram_capacity_bytes", 1 << 20)
    if sram_capacity is not None:
        over.update(sram_model="horowitz", sram_capacity_bytes=sram_capacity)
    constants = EnergyConstants.from_dict(saved["constants"]).with_overrides(**over)
    model = EnergyModel(constants, dac_bits=saved["dac_bits"], adc_bits=adc_bits or saved["adc_bits"],
                        read_voltage_V=saved["read_voltage_V"], g_min_S=saved["g_min_S"], g_max_S=saved["g_max_S"])
    train, infer = _counts(m["counters"]), _counts(m["inference_counters"])
    exact = True
    if sram_capacity is not None:
        res = m.get("resident_state_bytes", {"training": 0, "inference": 0})
        train, e1 = _move_resident(train, res["training"], sram_capacity, run_cap)
        infer, e2 = _move_resident(infer, res["inference"], sram_capacity, run_cap)
        exact = e1 and e2
    return {"train_J": model.energy(train).total_J / m["samples_trained"],
            "infer_J": model.energy(infer).total_J / results["n_test"], "exact": exact}


def scenarios() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("run as is", {})]
    out += [(f"ADC point {p}", {"adc_point": p}) for p in ADC_POINTS]
    out += [(f"ADC {b} bits (median)", {"adc_bits": b, "adc_point": "median"}) for b in ADC_BITS]
    out += [(f"SRAM {c >> 10} KiB" if c < 1 << 20 else f"SRAM {c >> 20} MiB", {"sram_capacity": c})
            for c in SRAM_CAPACITIES]
    out += [("ADC p10, SRAM 16 MiB (the lowest analog bill)", {"adc_point": "p10", "sram_capacity": 16 << 20}),
            ("ADC 10 bits median, SRAM 256 KiB (the highest analog inference)", {"adc_point": "median", "adc_bits": 10, "sram_capacity": 256 << 10})]
    return out


def table(results: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    methods = [m for m in ("analog_ff", "digital_ff", "digital_bp", "analog_bp") if m in results["methods"]]
    rows, inexact = [], False
    for name, kw in scenarios():
        r = {"scenario": name, **{m: bill(results, m, **kw) for m in methods}}
        inexact |= not all(r[m]["exact"] for m in methods)
        rows.append(r)
    head = "| scenario | " + " | ".join(f"{m} train / infer (uJ)" for m in methods)
    ratios = [m for m in ("analog_ff", "digital_ff") if m in methods and "digital_bp" in methods]
    head += "".join(f" | {m} / digital_bp train" for m in ratios) + " |"
    lines = [head, "|" + "---|" * (1 + len(methods) + len(ratios))]
    for r in rows:
        cells = [f"{1e6 * r[m]['train_J']:.2f} / {1e6 * r[m]['infer_J']:.2f}" for m in methods]
        cells += [f"{r[m]['train_J'] / r['digital_bp']['train_J']:.2f}" for m in ratios]
        lines.append(f"| {r['scenario']} | " + " | ".join(cells) + " |")
    if inexact:
        lines.append("\nSome state fitted the run's SRAM; at smaller capacities its residency was kept (inexact).")
    return "\n".join(lines), rows


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("analog_ff", "digital_ff", "digital_bp") if m in rows[0]]
    groups = [("ADC point", [r for r in rows if r["scenario"].startswith("ADC point")]),
              ("ADC bits (median point)", [r for r in rows if "bits (median)" in r["scenario"]]),
              ("SRAM capacity", [r for r in rows if r["scenario"].startswith("SRAM")])]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharey="row")
    for col, (title, rs) in enumerate(groups):
        labels = [r["scenario"].replace("ADC point ", "").replace(" (median)", "").replace("SRAM ", "") for r in rs]
        for row, key in enumerate(("train_J", "infer_J")):
            ax = axes[row, col]
            for m in methods:
                ax.plot(labels, [1e6 * r[m][key] for r in rs], marker="o", label=m)
            ax.set_yscale("log")
            ax.set_title(f"{'training' if key == 'train_J' else 'inference'}: {title}")
            ax.grid(True, which="both", alpha=0.3)
            if col == 0:
                ax.set_ylabel("energy per sample (uJ)")
    axes[0, 0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a run directory (or its results.json) with inference_counters")
    p.add_argument("--label", default=None, help="how to name the run in the table's header (default: its path)")
    p.add_argument("--out", default="docs", help="writes OUT/energy_sensitivity.md and OUT/figures/energy_sensitivity.png")
    args = p.parse_args(argv)
    path = Path(args.run)
    path = path / "results.json" if path.is_dir() else path
    results = json.loads(path.read_text())
    if any("inference_counters" not in m for m in results["methods"].values()):
        print(f"{path}: no inference_counters (a run from before this script); rerun it", file=sys.stderr)
        return 2
    text, rows = table(results)
    cfg = results["config"]
    env = results.get("environment", {})
    commit = f", commit {str(env['git_commit'])[:7]}{' + local changes' if env.get('git_dirty') else ''}" \
        if env.get("git_commit") else ""
    head = (f"Energy per sample from {args.label or f'`{path}`'} (device {results['device_profile']['name']}{commit}, "
            f"{'-'.join(str(d) for d in [784, *cfg['hidden']])}, {cfg['epochs']} epoch(s) x {results['n_train']} "
            f"samples, batch {cfg['batch_size']}), repriced by `benchmarks/energy_sensitivity.py`. "
            "Digital methods do not use the ADC; the ADC rows move the analog methods only.\n\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "energy_sensitivity.md").write_text(head + text + "\n")
    figure(rows, out / "figures" / "energy_sensitivity.png")
    print(head + text)
    print(f"wrote {out / 'energy_sensitivity.md'} and {out / 'figures' / 'energy_sensitivity.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
