"""Figures read from run directories (``results.json`` + ``metrics.csv``, see analogff/experiment.py).

    runs = find_runs("runs/*")                   # run dirs, sweep dirs, or globs of either
    fig = plot_accuracy_vs_energy(runs)          # every plot_* returns a matplotlib Figure
    save_all(runs, "docs/figures")               # the six figures as PNG

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend needed), so they
work headless and display inline in a notebook. Every function draws a figure with a "no data" note
instead of failing when a run lacks what it plots (no drift, a single ADC setting, no runs at all).
"""

from __future__ import annotations

import csv
import glob
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analogff.energy import COMPONENTS  # the energy model's breakdown, in its order

Run = dict[str, Any]

METHOD_COLORS = {"analog_ff": "tab:red", "digital_ff": "tab:blue", "digital_bp": "tab:green",
                 "analog_bp": "tab:orange", "ff_then_bp": "tab:purple", "bp_then_ff": "tab:brown"}
COMPONENT_COLORS = dict(zip(COMPONENTS, ("#a6cee3", "#1f78b4", "#b2df8a", "#33a02c", "#fdbf6f",
                                         "#e31a1c", "#6a3d9a", "#cab2d6", "#ff7f00", "#b15928")))
MARKERS = "os^Dv<>pPX*h"
LINESTYLES = ("-", "--", ":", "-.")
TIME_LABELS = {1: "1 s", 60: "1 min", 3600: "1 h", 86400: "1 day", 604800: "1 week",
               2592000: "1 month", 31536000: "1 year"}
FIGURE_NAMES = ("accuracy_per_epoch", "energy_breakdown", "accuracy_vs_energy", "drift",
                "accuracy_vs_adc_bits", "accuracy_vs_energy_by_rule", "layer_probes")
#: colours of analog FF's update rules (analogff.ff.AnalogLayer) in plot_accuracy_vs_energy_by_rule
RULE_COLORS = {"onarray": "tab:red", "adam": "tab:purple", "momentum": "tab:brown", "normalized": "tab:olive",
               "sgd": "tab:gray"}


# ---------------------------------------------------------------------------------------------
# reading runs
# ---------------------------------------------------------------------------------------------
def load_run(path: str | Path) -> Run:
    """``results.json`` of one run directory, plus ``"path"`` and ``"metrics"`` (metrics.csv rows)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} not found")
    results_path, metrics_path = path / "results.json", path / "metrics.csv"
    for f in (results_path, metrics_path):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: {path} is not a finished run directory")
    try:
        run = json.loads(results_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{results_path} is corrupt: {exc}") from None
    if not isinstance(run, dict) or not isinstance(run.get("methods"), dict) or "device_profile" not in run:
        raise ValueError(f"{results_path} is not an analogff results file (no 'methods' / 'device_profile')")
    try:
        with metrics_path.open(newline="") as fh:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"{metrics_path} is corrupt: {exc}") from None
    if rows and not {"method", "epoch", "test_accuracy"} <= set(rows[0]):
        raise ValueError(f"{metrics_path} lacks the columns method, epoch, test_accuracy")
    run["path"] = str(path)
    run["metrics"] = rows
    return run


def find_runs(pattern_or_dirs: str | Path | Iterable[str | Path]) -> list[Run]:
    """Load every run under the given run dirs, sweep dirs (sub-directories with results.json) or globs.

    A comma-separated string is split. A named directory that is missing or holds no run is an
    error; directories matched by a glob that hold no run (an unfinished run, a log folder) are skipped.
    """
    if isinstance(pattern_or_dirs, (str, Path)):
        items = [p.strip() for p in str(pattern_or_dirs).split(",") if p.strip()]
    else:
        items = [str(p) for p in pattern_or_dirs]
    runs: list[Run] = []
    seen: set[Path] = set()
    for item in items:
        is_glob = glob.has_magic(item)
        matches = sorted(Path(p) for p in glob.glob(item)) if is_glob else [Path(item)]
        for d in matches:
            found = _run_dirs(d)
            if not found and not is_glob:
                if not d.is_dir():
                    raise FileNotFoundError(f"run directory {d} not found")
                raise FileNotFoundError(f"no results.json in {d} or its sub-directories")
            for r in found:
                if r.resolve() not in seen:
                    seen.add(r.resolve())
                    runs.append(load_run(r))
    return runs


def _run_dirs(d: Path) -> list[Path]:
    if (d / "results.json").is_file():
        return [d]
    if d.is_dir():
        return sorted(p.parent for p in d.glob("*/results.json"))
    return []


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _as_list(runs: Run | Sequence[Run]) -> list[Run]:
    return [runs] if isinstance(runs, dict) else list(runs)


def _axes(ax: Axes | None, size: tuple[float, float] = (7.5, 4.2)) -> Axes:
    if ax is not None:
        return ax
    return Figure(figsize=size, layout="constrained").add_subplot()


def _root(ax: Axes) -> Figure:
    """The figure an axes belongs to (the top-level one, for axes in a sub-figure)."""
    fig = ax.get_figure(root=True)
    assert isinstance(fig, Figure)
    return fig


def device_label(run: Run) -> str:
    """``pcm`` or ``pcm, ADC 6 b`` when the run overrode the profile's ADC bits."""
    label = run["device_profile"].get("name", "?")
    bits = run.get("config", {}).get("adc_bits")
    return label if bits is None else f"{label}, ADC {bits} b"


def _labels(runs: list[Run]) -> list[str]:
    """Device labels, made unique with the directory name where two runs share a device."""
    labels = [device_label(r) for r in runs]
    return [f"{lab} [{Path(r.get('path', '?')).name}]" if labels.count(lab) > 1 else lab
            for lab, r in zip(labels, runs)]


def _rank(method: str) -> int:
    order = list(METHOD_COLORS)
    return order.index(method) if method in order else len(order)


def _ordered(methods: Iterable[str]) -> list[str]:
    return sorted(methods, key=_rank)


def _color(method: str) -> str:
    return METHOD_COLORS.get(method, "tab:gray")


def _series_name(method: str, label: str, count: int) -> str:
    """The method alone, or with the run's label where the method has several distinct series."""
    return method if count == 1 else f"{method} ({label})"


def _no_data(ax: Axes, note: str) -> None:
    ax.text(0.5, 0.5, f"no data\n{note}", transform=ax.transAxes, ha="center", va="center",
            color="0.4", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def _note(ax: Axes, note: str) -> None:
    ax.text(0.01, 0.01, note, transform=ax.transAxes, ha="left", va="bottom", color="0.4", fontsize=8)


def _legend(ax: Axes, **kw: Any) -> None:
    """Legend outside the axes on the right: it never hides data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), **kw)


def format_joules(value: float) -> str:
    """Engineering notation: 1.03e-6 -> '1.03 µJ'."""
    if value <= 0 or not math.isfinite(value):
        return f"{value:g} J"
    for scale, prefix in ((1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}J"
    return f"{value:.2e} J"


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def plot_accuracy_per_epoch(runs: Run | Sequence[Run], ax: Axes | None = None) -> Figure:
    """Test accuracy after each epoch, one line per method (and per device when there are several runs).

    Colour is the method, line style and marker the run. A series repeated unchanged in several
    runs of a sweep (a digital method) is drawn once.
    """
    runs = _as_list(runs)
    ax = _axes(ax)
    labels = _labels(runs)
    series: dict[tuple, tuple[str, int]] = {}  # (method, epochs, accuracies) -> (method, run index)
    for i, run in enumerate(runs):
        for method in _ordered(run["methods"]):
            rows = [r for r in run["metrics"] if r.get("method") == method and r.get("test_accuracy") is not None]
            if rows:
                key = (method, tuple(r["epoch"] for r in rows), tuple(100 * r["test_accuracy"] for r in rows))
                series.setdefault(key, (method, i))
    counts = Counter(method for method, _ in series.values())
    for (_, x, y), (method, i) in series.items():
        ax.plot(x, y, color=_color(method), linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], label=_series_name(method, labels[i], counts[method]))
    title = "Test accuracy per epoch" + (f" — {labels[0]}" if len(runs) == 1 else "")
    return _finish_integer_x(ax, "epoch", "test accuracy (%)", title, bool(series), "no per-epoch rows in metrics.csv")


def plot_energy_breakdown(run: Run, ax: Axes | None = None, kind: str = "train") -> Figure:
    """Per method, the share of each energy component (stacked to 100 %), total J/sample above each bar.

    The components span several orders of magnitude and so can the totals of the methods, so the
    bars show shares on a linear axis and the absolute total is written on top (stacking on a log
    axis would misstate the shares). ``kind``: "train" or "inference".
    """
    if kind not in ("train", "inference"):
        raise ValueError(f"kind must be 'train' or 'inference', got {kind!r}")
    ax = _axes(ax)
    key = "energy_breakdown_J" if kind == "train" else "inference_energy_breakdown_J"
    methods = _ordered(run["methods"])
    breakdowns = {m: run["methods"][m].get(key) or {} for m in methods}
    totals = {m: sum(b.values()) for m, b in breakdowns.items()}
    ax.set_title(f"{kind.capitalize()} energy per sample — {device_label(run)}")
    if not any(t > 0 for t in totals.values()):
        _no_data(ax, f"no non-zero {key} in this run")
        return _root(ax)
    used = {c for b in breakdowns.values() for c, v in b.items() if v > 0}
    components = [c for c in COMPONENTS if c in used] + sorted(used - set(COMPONENTS))
    bottom = [0.0] * len(methods)
    for comp in components:
        share = [100 * breakdowns[m].get(comp, 0.0) / totals[m] if totals[m] > 0 else 0.0 for m in methods]
        ax.bar(range(len(methods)), share, bottom=bottom, width=0.6, label=comp,
               color=COMPONENT_COLORS.get(comp), edgecolor="white", linewidth=0.5)
        bottom = [b + s for b, s in zip(bottom, share)]
    for i, m in enumerate(methods):
        if totals[m] > 0:
            ax.text(i, 101, format_joules(totals[m]), ha="center", va="bottom", fontsize=9)
        else:
            ax.text(i, 50, "no energy\nrecorded", ha="center", va="center", fontsize=8, color="0.4")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylim(0, 110)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(f"share of {kind} energy (%)")
    _legend(ax, title="component", title_fontsize=8)
    return _root(ax)


def plot_accuracy_vs_energy(runs: Run | Sequence[Run], ax: Axes | None = None) -> Figure:
    """Test accuracy vs training energy per sample (log axis), one point per (device, method).

    Colour is the method, marker the device of analog methods (digital methods: a star). A digital
    result repeated unchanged across a sweep is drawn once. Labels are placed where they fit.
    """
    runs = _as_list(runs)
    ax = _axes(ax)
    labels = _labels(runs)
    points: dict[tuple, tuple[str, int]] = {}  # (method, J, acc) -> (method, run index)
    skipped = 0
    for i, run in enumerate(runs):
        for method in _ordered(run["methods"]):
            m = run["methods"][method]
            energy, acc = m.get("train_energy_per_sample_J") or 0.0, m.get("test_accuracy")
            if acc is None or energy <= 0:
                skipped += 1
            else:
                points.setdefault((method, energy, 100 * acc), (method, i))
    ax.set_title("Accuracy vs training energy")
    if not points:
        _no_data(ax, "no method with an accuracy and a positive training energy")
        return _root(ax)
    analog_runs: dict[int, None] = {}
    for (_, energy, acc), (method, i) in points.items():
        analog = method.startswith("analog")
        if analog:
            analog_runs[i] = None
        ax.scatter([energy], [acc], color=_color(method), marker=MARKERS[i % len(MARKERS)] if analog else "*",
                   s=120 if not analog else 55, edgecolor="black", linewidth=0.5, zorder=3)
    for method in dict.fromkeys(method for method, _ in points.values()):  # legend: colour = method
        ax.scatter([], [], color=_color(method), marker="s", label=method)
    if len(runs) > 1:  # legend: marker = device of the analog points
        for i in analog_runs:
            ax.scatter([], [], color="0.6", marker=MARKERS[i % len(MARKERS)], edgecolor="black",
                       linewidth=0.5, label=labels[i])
    _accuracy_energy_axes(ax, x_margin=0.2)
    _annotate_where_free(ax, [(e, a, labels[i] if method.startswith("analog") else method)
                              for (_, e, a), (method, i) in points.items()])
    if skipped:
        _note(ax, f"{skipped} result(s) without a positive training energy not shown")
    return _root(ax)


def _accuracy_energy_axes(ax: Axes, x_margin: float) -> None:
    """Test accuracy (%) against training energy per sample (J, log axis), gridded, with the legend."""
    ax.set_xscale("log")
    ax.margins(x=x_margin, y=0.12)
    ax.set_xlabel("training energy per sample (J)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax)


def analog_rule(run: Run, method: str = "analog_ff") -> str:
    """The update rule analog FF ran with: recorded by the run (the resolved rule), else its config."""
    m = run["methods"].get(method, {})
    return str(m.get("analog_update") or run.get("config", {}).get("analog_update") or "?")


def plot_accuracy_vs_energy_by_rule(runs: Run | Sequence[Run], ax: Axes | None = None) -> Figure:
    """The trade-off in one picture: test accuracy vs training energy per sample (log axis) of analog
    FF for every (profile, update rule) among ``runs``, colour = the rule (on-array learning, the
    periphery's Adam, plain pulses, ...), with digital FF and BP as black stars. Each point is
    labelled with its profile."""
    runs = _as_list(runs)
    ax = _axes(ax, size=(8.5, 4.8))
    points: dict[tuple, tuple[str, str]] = {}  # (label, J, acc) -> (kind, colour)
    for run in runs:
        for method, m in run["methods"].items():
            energy, acc = m.get("train_energy_per_sample_J") or 0.0, m.get("test_accuracy")
            if acc is None or energy <= 0:
                continue
            if method == "analog_ff":
                rule = analog_rule(run, method)
                points.setdefault((device_label(run), energy, 100 * acc), (rule, RULE_COLORS.get(rule, "tab:gray")))
            elif method in ("digital_ff", "digital_bp"):
                points.setdefault((method.replace("_", " "), energy, 100 * acc), ("digital", "black"))
    ax.set_title("Analog FF: accuracy vs training energy, by update rule")
    if not points:
        _no_data(ax, "no run with an accuracy and a positive training energy")
        return _root(ax)
    for (_, energy, acc), (kind, colour) in points.items():
        ax.scatter([energy], [acc], color=colour, marker="*" if kind == "digital" else "o",
                   s=140 if kind == "digital" else 60, edgecolor="black", linewidth=0.5, zorder=3)
    for kind, colour in dict.fromkeys(points.values()):
        ax.scatter([], [], color=colour, marker="*" if kind == "digital" else "o", edgecolor="black", linewidth=0.5,
                   label={"onarray": "on-array (transfer compound)", "adam": "periphery Adam",
                          "sgd": "plain pulsed SGD", "digital": "digital FF / BP"}.get(kind, kind))
    _accuracy_energy_axes(ax, x_margin=0.25)
    _annotate_where_free(ax, [(e, a, lab) for (lab, e, a) in points])
    return _root(ax)


def _annotate_where_free(ax: Axes, points: list[tuple[float, float, str]], fontsize: int = 7) -> None:
    """Label each point right or left of it, above or below, skipping labels that would overlap.

    Works in axes fractions with an estimated text size (log x axis); the legend names every point.
    """
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    bbox = ax.get_position()
    fig_w, fig_h = _root(ax).get_size_inches()
    char_w = 0.6 * fontsize / 72 / (fig_w * bbox.width)   # axes fraction per character
    line_h = 1.3 * fontsize / 72 / (fig_h * bbox.height)
    xy = [((math.log10(e) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)), (a - y0) / (y1 - y0))
          for e, a, _ in points]
    taken = [(x - 0.01, y - 0.015, x + 0.01, y + 0.015) for x, y in xy]  # the markers themselves
    for (x, y), (e, a, text) in zip(xy, points):
        w = char_w * len(text)
        for bx, by in ((x + 0.015, y + 0.01), (x + 0.015, y - 0.01 - line_h),
                       (x - 0.015 - w, y + 0.01), (x - 0.015 - w, y - 0.01 - line_h)):
            box = (bx, by, bx + w, by + line_h)
            inside = 0 <= box[0] and box[2] <= 1 and 0 <= box[1] and box[3] <= 1
            if inside and not any(_overlap(box, t) for t in taken):
                ax.annotate(text, (e, a), xytext=(bx, by), textcoords="axes fraction", fontsize=fontsize,
                            va="bottom", ha="left", color="0.2")
                taken.append(box)
                break


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def plot_drift(runs: Run | Sequence[Run], ax: Axes | None = None) -> Figure:
    """Accuracy vs time after programming (log axis) of every analog method with a drift evaluation.

    With up to four series, dotted lines mark each series' accuracy right after training, before
    programming noise and drift. Methods whose drift was "skipped" are listed when nothing is drawn.
    """
    runs = _as_list(runs)
    ax = _axes(ax)
    labels = _labels(runs)
    series: list[tuple[str, int, list[float], list[float], float | None]] = []
    reasons = []
    for i, run in enumerate(runs):
        for method in _ordered(run["methods"]):
            m = run["methods"][method]
            drift = m.get("drift") or {}
            if "skipped" in drift:
                reasons.append(f"{labels[i]} {method}: {drift['skipped']}")
                continue
            points = sorted((float(t), 100 * a) for t, a in drift.items()
                            if t not in ("skipped", "unsupported") and float(t) > 0 and a is not None)
            if points:
                before = m.get("test_accuracy")
                series.append((method, i, [t for t, _ in points], [a for _, a in points],
                               None if before is None else 100 * before))
    ax.set_title("Accuracy after programming, drift and read noise")
    if not series:
        _no_data(ax, "no drift evaluation in these runs" + "".join(f"\n{r}" for r in reasons[:3]))
        return _root(ax)
    counts = Counter(method for method, *_ in series)
    for method, i, t, acc, before in series:
        ax.plot(t, acc, color=_color(method), linestyle=LINESTYLES[i % len(LINESTYLES)],
                marker=MARKERS[i % len(MARKERS)], label=_series_name(method, labels[i], counts[method]))
        if len(series) <= 4 and before is not None:
            ax.axhline(before, color=_color(method), linestyle=":", linewidth=1, alpha=0.7)
    ticks = sorted({x for _, _, t, _, _ in series for x in t})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [_time_label(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("time after programming")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if len(series) <= 4:
        ax.plot([], [], color="0.5", linestyle=":", label="after training,\nbefore programming")
    _legend(ax)
    return _root(ax)


def _time_label(t: float) -> str:
    return TIME_LABELS.get(int(t), f"{t:g} s") if float(t).is_integer() else f"{t:g} s"


def plot_accuracy_vs_adc_bits(runs: Run | Sequence[Run], ax: Axes | None = None) -> Figure:
    """Accuracy of the analog methods vs the ADC resolution, one line per (device, method).

    Runs are joined into a line when their configs differ only in ADC bits (an ``--adc-bits`` sweep).
    Digital methods have no ADC: their mean accuracy is a dashed horizontal reference.
    """
    runs = _as_list(runs)
    ax = _axes(ax)
    series: dict[tuple[str, str, str], dict[int, float]] = {}  # (device, method, config) -> {bits: acc}
    digital: dict[str, list[float]] = {}
    for run in runs:
        bits = run["device_profile"].get("adc_bits")
        config = {k: v for k, v in run.get("config", {}).items() if k not in ("adc_bits", "out")}
        for method, m in run["methods"].items():
            if m.get("test_accuracy") is None:
                continue
            if method.startswith("analog") and bits is not None:
                key = (run["device_profile"].get("name", "?"), method, json.dumps(config, sort_keys=True))
                series.setdefault(key, {})[int(bits)] = 100 * m["test_accuracy"]
            elif method.startswith("digital"):
                digital.setdefault(method, []).append(100 * m["test_accuracy"])
    ax.set_title("Accuracy vs ADC resolution")
    if not series:
        _no_data(ax, "no analog method with an ADC in these runs")
        return _root(ax)
    devices = list(dict.fromkeys(d for d, _, _ in series))
    names = Counter((d, m) for d, m, _ in series)
    seen: Counter = Counter()
    for (device, method, _), points in sorted(series.items(), key=lambda kv: _rank(kv[0][1])):
        seen[(device, method)] += 1
        suffix = f" #{seen[(device, method)]}" if names[(device, method)] > 1 else ""
        j = devices.index(device)
        bits = sorted(points)
        ax.plot(bits, [points[b] for b in bits], color=_color(method), marker=MARKERS[j % len(MARKERS)],
                linestyle=LINESTYLES[j % len(LINESTYLES)], label=f"{method} ({device}){suffix}")
    for method in _ordered(digital):
        ax.axhline(sum(digital[method]) / len(digital[method]), color=_color(method), linestyle="--",
                   linewidth=1, label=f"{method} (no ADC)")
    all_bits = sorted({b for p in series.values() for b in p})
    ax.set_xticks(all_bits)
    ax.set_xlim(all_bits[0] - 1, all_bits[-1] + 1)
    ax.set_xlabel("ADC bits")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    _legend(ax)
    if max(len(p) for p in series.values()) < 2:
        _note(ax, "one ADC setting per device: sweep with e.g. --adc-bits 4 6 8")
    return _root(ax)


def plot_layer_probes(runs: Run | Sequence[Run], ax: Axes | None = None) -> Figure:
    """Test accuracy of a linear probe on each FF layer (results.json ``layer_probe_accuracy``),
    one line per method and run: does a deeper layer know the class better, or worse?"""
    from .report import METHOD_NAMES

    runs = _as_list(runs)
    ax = _axes(ax, size=(10.5, 4.5))
    drawn = 0
    methods = {m for run in runs for m, v in run["methods"].items() if v.get("layer_probe_accuracy")}
    for i, run in enumerate(runs):
        for method in _ordered(run["methods"]):
            acc = run["methods"][method].get("layer_probe_accuracy") or []
            if not acc:
                continue
            where = [Path(run.get("path", "?")).name, str(run.get("dataset", ""))]
            if method.startswith("analog"):  # a digital method has no device
                where.insert(1, device_label(run))
            color = _color(method) if len(methods) > 1 else f"C{i % 10}"  # one method: a colour per run
            ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], color=color,
                    linestyle=LINESTYLES[i % len(LINESTYLES)], marker=MARKERS[i % len(MARKERS)],
                    label=f"{METHOD_NAMES.get(method, method)} ({', '.join(w for w in where if w)})")
            drawn += 1
    return _finish_integer_x(ax, "FF layer", "linear-probe test accuracy (%)",
                             "What each layer knows: a linear probe per layer", drawn > 0,
                             "no layer_probe_accuracy in the runs (probe_samples = 0?)")


def _finish_integer_x(ax: Axes, xlabel: str, ylabel: str, title: str, drawn: bool, no_data: str) -> Figure:
    """Labels and title; then the "no data" note, or integer ticks on x, a grid and the legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if not drawn:
        _no_data(ax, no_data)
        return _root(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend(ax)
    return _root(ax)


def energy_breakdown_figure(runs: Run | Sequence[Run]) -> Figure:
    """Training and inference energy breakdowns side by side, one row per run."""
    runs = _as_list(runs)
    fig = Figure(figsize=(13, 3.8 * max(1, len(runs))), layout="constrained")
    if not runs:
        _no_data(fig.add_subplot(), "no runs")
        return fig
    for run, (left, right) in zip(runs, fig.subplots(len(runs), 2, squeeze=False)):
        plot_energy_breakdown(run, ax=left, kind="train")
        plot_energy_breakdown(run, ax=right, kind="inference")
    return fig


def save_all(runs: Run | Sequence[Run], out_dir: str | Path, dpi: int = 120,
             names: Sequence[str] | None = None) -> list[Path]:
    """Write the figures ``names`` (default: all of FIGURE_NAMES) as PNG into ``out_dir`` (created
    if needed); returns their paths."""
    names = list(FIGURE_NAMES if names is None else names)
    unknown = [n for n in names if n not in FIGURE_NAMES]
    if unknown:
        raise ValueError(f"unknown figure {unknown[0]!r}: choose from {', '.join(FIGURE_NAMES)}")
    runs = _as_list(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    draw = {
        "accuracy_per_epoch": plot_accuracy_per_epoch,
        "energy_breakdown": energy_breakdown_figure,
        "accuracy_vs_energy": plot_accuracy_vs_energy,
        "drift": plot_drift,
        "accuracy_vs_adc_bits": plot_accuracy_vs_adc_bits,
        "accuracy_vs_energy_by_rule": plot_accuracy_vs_energy_by_rule,
        "layer_probes": plot_layer_probes,
    }
    paths = []
    for name in names:
        path = out / f"{name}.png"
        draw[name](runs).savefig(path, dpi=dpi)
        paths.append(path)
    return paths
