"""``analogff report RUN...``: the README's tables, as markdown, from results.json files.

    analogff report runs/main                     # a run directory
    analogff report runs/grid                     # a sweep directory (its cells)
    analogff report 'runs/*' docs/results/quick/results.json --out docs/results.md

Tables: accuracy (the run's readout, and both FF readouts: goodness / softmax head) with energy per
sample and its top components, programming pulses and wall time; the training energy breakdown per
component; accuracy after drift where measured; and per run its command (``analogff run`` with the
flags that rebuild its config), dataset size and git commit (where results.json records one).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

METHOD_NAMES = {"analog_ff": "analog FF", "digital_ff": "digital FF", "digital_bp": "digital BP",
                "analog_bp": "analog BP", "ff_then_bp": "digital FF then BP", "bp_then_ff": "digital BP then FF"}
SECTIONS = ("accuracy", "energy", "drift", "probes", "runs")


class ReportError(ValueError):
    pass


def find_results(items: Iterable[str | Path]) -> list[Path]:
    """results.json files of run directories, sweep directories (one level down), files, globs."""
    found: list[Path] = []
    for item in items:
        s = str(item)
        matches = sorted(glob.glob(s)) if glob.has_magic(s) else [s]
        if not matches:
            raise ReportError(f"{s}: nothing matches")
        for m in matches:
            p = Path(m)
            if p.is_file():
                paths = [p]
            elif (p / "results.json").is_file():
                paths = [p / "results.json"]
            elif p.is_dir():
                paths = sorted(p.glob("*/results.json"))
                if not paths and not glob.has_magic(s):
                    raise ReportError(f"{p}: no results.json in it or its sub-directories")
            else:
                raise ReportError(f"{p}: no such file or directory")
            for q in paths:
                if q.resolve() not in {f.resolve() for f in found}:
                    found.append(q)
    return found


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ReportError(f"{path}: not a readable results.json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("methods"), dict):
        raise ReportError(f"{path}: not an analogff results file (no 'methods')")
    return data


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------
def joules(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("J", 1.0), ("mJ", 1e-3), ("uJ", 1e-6), ("nJ", 1e-9), ("pJ", 1e-12)):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return "0 J" if v == 0 else f"{v:.3g} J"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def count(v: float | None) -> str:
    if v is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.4g} {unit}"
    return f"{v:g}"


def duration(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def top_components(breakdown: dict[str, float], n: int = 3) -> str:
    total = sum(breakdown.values()) or 1.0
    top = sorted(breakdown.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in top if v > 0) or "-"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _label(path: Path, base: Path | None) -> str:
    d = path.parent
    try:
        return str(d.relative_to(base)) if base else str(d)
    except ValueError:
        return str(d)


def _device(run: dict[str, Any], method: str) -> str:
    if not method.startswith("analog"):  # digital methods, hybrid schedules included
        return "-"
    return str((run.get("device_profile") or {}).get("name") or Path(str(run.get("config", {}).get("device", "-"))).stem)


def command(run: dict[str, Any], path: Path) -> str:
    """``analogff run`` with the flags that rebuild the run's config (or '-' if it no longer parses)."""
    from .devices import shipped_profiles

    try:
        from .options import config_argv, config_from_dict, config_values, make_config, same_value
        from .recipes import RECIPES, recipe_values

        cfg = config_from_dict(run.get("config") or {})
        argv = config_argv(cfg, skip=("out",))
        values = config_values(cfg)
        for name in RECIPES:  # the shortest spelling: from the defaults or from a recipe the run kept
            base = recipe_values(name)
            kept = config_values(make_config(base))
            if name != "main" and all(same_value(values.get(k), kept.get(k)) for k in base):
                alt = ["--recipe", name, *config_argv(cfg, skip=("out",), base=base)]
                if len(alt) < len(argv):
                    argv = alt
    except Exception:  # noqa: BLE001: an old results file
        return "-"
    device = (run.get("config") or {}).get("device")
    name = (run.get("device_profile") or {}).get("name")
    if device and str(device).endswith(".toml") and Path(str(device)).stem == name and name in shipped_profiles():
        argv = [("devices/" + Path(str(device)).name) if a == device else a for a in argv]  # a shipped profile
    return " ".join(shlex.quote(a) for a in ["analogff", "run", *argv, "--out", str(path.parent)])


def commit(run: dict[str, Any]) -> str:
    env = run.get("environment") or {}
    for key in ("git_commit", "commit", "git_sha", "git"):
        v = env.get(key) if isinstance(env, dict) else None
        if isinstance(v, dict):
            v = v.get("commit") or v.get("sha")
        if v:
            dirty = isinstance(env, dict) and (env.get("git_dirty") or env.get("dirty"))
            return str(v)[:10] + (" (dirty)" if dirty else "")
    return "-"


# ---------------------------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------------------------
def accuracy_table(runs: list[tuple[Path, dict]], base: Path | None = None) -> str:
    rows = []
    for path, run in runs:
        epochs = (run.get("config") or {}).get("epochs")
        for name, m in run["methods"].items():
            g, s = m.get("test_accuracy_goodness"), m.get("test_accuracy_softmax")
            both = f"{pct(g)} / {pct(s)}" if (g is not None or s is not None) else "-"
            rows.append([_label(path, base), METHOD_NAMES.get(name, name), _device(run, name), str(epochs or "-"),
                         pct(m.get("test_accuracy")), both, joules(m.get("train_energy_per_sample_J")),
                         joules(m.get("inference_energy_per_sample_J")),
                         top_components(m.get("energy_breakdown_J") or {}),
                         count((m.get("counters") or {}).get("update_pulses")) if name.startswith("analog") else "-",
                         duration(m.get("wall_time_s"))])
    return _table(["run", "method", "device", "epochs", "test accuracy", "goodness / softmax head",
                   "training energy / sample", "inference energy / sample", "top training energy components",
                   "programming pulses", "wall time"], rows)


def energy_table(runs: list[tuple[Path, dict]], base: Path | None = None) -> str:
    comps: list[str] = []
    for _, run in runs:
        for m in run["methods"].values():
            for k, v in (m.get("energy_breakdown_J") or {}).items():
                if v and k not in comps:
                    comps.append(k)
    rows = []
    for path, run in runs:
        for name, m in run["methods"].items():
            br = m.get("energy_breakdown_J") or {}
            rows.append([_label(path, base), METHOD_NAMES.get(name, name), joules(m.get("train_energy_per_sample_J")),
                         *[joules(br.get(c)) if br.get(c) else "-" for c in comps]])
    return _table(["run", "method", "training energy / sample", *comps], rows)


def drift_table(runs: list[tuple[Path, dict]], base: Path | None = None) -> str:
    times: list[str] = []
    for _, run in runs:
        for m in run["methods"].values():
            for t in (m.get("drift") or {}):
                if t not in ("skipped", "unsupported") and t not in times:
                    times.append(t)
    times.sort(key=float)
    rows = []
    for path, run in runs:
        for name, m in run["methods"].items():
            d = m.get("drift") or {}
            if not name.startswith("analog"):
                continue
            if "skipped" in d:
                cells = ["(no retention model)"] + ["" for _ in times[1:]]
            else:
                cells = [pct(d[t]) if t in d else ("n.a." if t in (d.get("unsupported") or {}) else "-") for t in times]
            rows.append([_label(path, base), METHOD_NAMES.get(name, name), _device(run, name), *cells])
    if not rows or not times:
        return ""
    return _table(["run", "method", "device", *[f"after {_time(t)}" for t in times]], rows)


def probes_table(runs: list[tuple[Path, dict]], base: Path | None = None) -> str:
    """A row per FF method with ``layer_probe_accuracy``: the probe's test accuracy per layer."""
    rows, width = [], 0
    for path, run in runs:
        for name, m in run["methods"].items():
            acc = m.get("layer_probe_accuracy") or []
            if acc:
                width = max(width, len(acc))
                rows.append([_label(path, base), METHOD_NAMES.get(name, name), str(run.get("dataset", "-")),
                             str(m.get("variant", "supervised")), *[pct(a) for a in acc]])
    if not rows:
        return ""
    rows = [r + ["" for _ in range(4 + width - len(r))] for r in rows]
    return _table(["run", "method", "dataset", "variant", *[f"layer {i + 1}" for i in range(width)]], rows)


def _time(t: str) -> str:
    v = float(t)
    for unit, s in (("year", 31536000), ("day", 86400), ("h", 3600), ("min", 60)):
        if v >= s and (v / s).is_integer():
            n = int(v / s)
            return f"{n} {unit}{'s' if n > 1 and unit in ('year', 'day') else ''}"
    return f"{v:g} s"


def runs_table(runs: list[tuple[Path, dict]], base: Path | None = None) -> str:
    rows = []
    for path, run in runs:
        wall = sum((m.get("wall_time_s") or 0.0) for m in run["methods"].values())
        rows.append([_label(path, base), f"`{command(run, path)}`", commit(run), str(run.get("dataset", "-")),
                     f"{run.get('n_train', '-')} / {run.get('n_test', '-')}", duration(wall)])
    return _table(["run", "command", "commit", "dataset", "train / test samples", "wall time"], rows)


def markdown_report(items: Sequence[str | Path], title: str | None = None, sections: Sequence[str] = SECTIONS,
                    failed: Sequence[tuple[str, str]] = (), level: int = 2) -> str:
    """The report of the runs found under ``items`` (see :func:`find_results`); its tables under
    headings of ``level`` (the title one above)."""
    h = "#" * max(1, min(level, 6)) + " "
    paths = find_results(items) if items else []
    runs = [(p, load(p)) for p in paths]
    parents = {p.parent.parent for p in paths}
    base = parents.pop() if len(parents) == 1 and len(paths) > 1 else None
    parts = [f"{h[1:] if len(h) > 2 else h}{title}"] if title else []
    if base is not None:
        parts.append(f"Runs under `{base}`.")
    if runs:
        if "accuracy" in sections:
            parts += [h + "Accuracy and energy per sample", accuracy_table(runs, base)]
        if "energy" in sections:
            parts += [h + "Training energy per sample, by component", energy_table(runs, base)]
        if "drift" in sections:
            t = drift_table(runs, base)
            if t:
                parts += [h + "Accuracy after programming (drift)", t]
        if "probes" in sections:
            t = probes_table(runs, base)
            if t:
                parts += [h + "Linear probe per layer (test accuracy)", t]
        if "runs" in sections:
            parts += [h + "Runs", runs_table(runs, base)]
    if failed:
        parts += [h + "Failed cells", _table(["cell", "reason"], [[n, (e or "").replace("|", "/")] for n, e in failed])]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run directories, sweep directories, results.json files or globs of them")
    p.add_argument("--sections", default=",".join(SECTIONS), metavar="S1,S2",
                   help=f"comma list of tables from {','.join(SECTIONS)} (default all)")
    p.add_argument("--title", default=None, help="a heading for the report")
    p.add_argument("--level", type=int, default=2, metavar="N", help="markdown level of the tables' headings (default 2)")
    p.add_argument("--out", default=None, metavar="FILE", help="write the markdown here (atomically) instead of stdout")
    p.add_argument("--update", default=None, metavar="FILE",
                   help="regenerate, in FILE, every block between '<!-- analogff report ARGS -->' and "
                        "'<!-- /analogff report -->' from its ARGS (the README's tables); RUN is then ignored")
    return p


BLOCK = re.compile(r"(<!-- analogff report (?P<args>[^>]*?) -->\n)(?P<body>.*?)(<!-- /analogff report -->)", re.S)


def update_blocks(text: str) -> str:
    """``text`` with every report block regenerated from the arguments in its opening comment."""
    def fresh(m: re.Match) -> str:
        ns = add_parser(argparse.ArgumentParser(add_help=False)).parse_args(shlex.split(m.group("args")))
        sections = [x.strip() for x in ns.sections.split(",") if x.strip()]
        body = markdown_report(ns.runs, title=ns.title, sections=sections, level=ns.level)
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(fresh, text)


def cmd_report(args: argparse.Namespace) -> int:
    from .cli import UsageError

    if not args.runs and not args.update:
        raise UsageError("give RUN directories or result files (or --update FILE)")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad or not sections:
        raise UsageError(f"--sections: unknown table {bad[0] if bad else args.sections!r}; choose from {','.join(SECTIONS)}")
    try:
        if args.update:
            target = Path(args.update)
            if not target.is_file():
                raise ReportError(f"--update {target}: no such file")
            old = target.read_text()
            new = update_blocks(old)
            if new != old:
                from .experiment import write_atomic

                write_atomic(target, new)
            print(f"{target}: {len(BLOCK.findall(old))} report block(s), {'updated' if new != old else 'unchanged'}")
            return 0
        text = markdown_report(args.runs, title=args.title, sections=sections, level=args.level)
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    if args.out:
        from .experiment import write_atomic

        write_atomic(Path(args.out), text)
    else:
        sys.stdout.write(text)
    return 0
