"""Figures from a real (tiny) run: every plot draws data, "no data" never crashes, PNGs, CLI, notebook."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from matplotlib.figure import Figure
from nbclient import NotebookClient

from analogff import plots
from analogff.experiment import main

ROOT = Path(__file__).resolve().parents[1]
RUN_ARGS = ["--hidden", "32", "--epochs", "1", "--train-limit", "600", "--test-limit", "200",
            "--methods", "digital_ff,digital_bp,analog_ff", "--engine", "aihwkit", "--drift-times", "1,3600",
            "--device", str(ROOT / "devices" / "pcm.toml")]
METHODS = {"digital_ff", "digital_bp", "analog_ff"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One real run: three methods on the PCM profile (which has a drift model)."""
    out = tmp_path_factory.mktemp("plots") / "pcm_run"
    assert main([*RUN_ARGS, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def adc_sweep(run_dir, tmp_path_factory) -> Path:
    """A sweep directory laid out as ``--adc-bits 4 8`` writes it, made from copies of the real run.

    Only the ADC bits and the analog accuracy are edited, so the plotting of a sweep can be tested
    without training twice more.
    """
    sweep = tmp_path_factory.mktemp("sweep")
    for bits, acc in ((4, 0.2), (8, 0.3)):
        sub = sweep / f"pcm_adc{bits}"
        shutil.copytree(run_dir, sub)
        res = json.loads((sub / "results.json").read_text())
        res["config"]["adc_bits"] = res["device_profile"]["adc_bits"] = bits
        res["methods"]["analog_ff"]["test_accuracy"] = acc
        (sub / "results.json").write_text(json.dumps(res))
    return sweep


@pytest.fixture(scope="module")
def run(run_dir) -> dict:
    return plots.load_run(run_dir)


def test_load_run_reads_results_and_metrics(run, run_dir):
    assert run["path"] == str(run_dir) and set(run["methods"]) == METHODS
    assert {r["method"] for r in run["metrics"]} == METHODS
    row = run["metrics"][0]
    assert isinstance(row["epoch"], int) and 0.0 <= row["test_accuracy"] <= 1.0


def test_load_run_errors_name_the_path(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        plots.load_run(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match=str(broken / "metrics.csv")):
        plots.load_run(broken)
    shutil.copy(run_dir / "metrics.csv", broken)
    (broken / "results.json").write_text('{"config": ')
    with pytest.raises(ValueError, match=f"{broken / 'results.json'} is corrupt"):
        plots.load_run(broken)


def test_find_runs_takes_run_dirs_sweep_dirs_and_globs(run_dir, adc_sweep, tmp_path):
    assert [r["path"] for r in plots.find_runs(run_dir)] == [str(run_dir)]
    sweep = plots.find_runs(adc_sweep)
    assert [Path(r["path"]).name for r in sweep] == ["pcm_adc4", "pcm_adc8"]
    assert len(plots.find_runs(f"{run_dir},{adc_sweep}/*")) == 3
    assert len(plots.find_runs([run_dir, run_dir])) == 1  # no duplicates
    assert plots.find_runs(str(tmp_path / "nothing*")) == []
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        plots.find_runs(tmp_path / "missing_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no results.json"):
        plots.find_runs(tmp_path / "empty")


def test_accuracy_per_epoch_draws_a_line_per_method(run):
    fig = plots.plot_accuracy_per_epoch([run])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and {t.get_text() for t in ax.get_legend().get_texts()} == METHODS


def test_energy_breakdown_stacks_components_with_totals(run):
    for kind in ("train", "inference"):
        ax = plots.plot_energy_breakdown(run, kind=kind).axes[0]
        assert len(ax.patches) >= 3 * 3  # at least three components for each of the three methods
        totals = [t.get_text() for t in ax.texts if t.get_text().endswith("J")]
        assert len(totals) == 3
    with pytest.raises(ValueError, match="kind"):
        plots.plot_energy_breakdown(run, kind="both")


def test_accuracy_vs_energy_has_a_point_per_method(run):
    ax = plots.plot_accuracy_vs_energy([run]).axes[0]
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == 3 and ax.get_xscale() == "log"


def test_drift_draws_the_analog_method(run):
    ax = plots.plot_drift(run).axes[0]
    assert ax.get_xscale() == "log"
    drift = [ln for ln in ax.lines if ln.get_label() == "analog_ff"]
    assert len(drift) == 1 and list(drift[0].get_xdata()) == [1.0, 3600.0]


def test_accuracy_vs_adc_bits_joins_a_sweep(run, adc_sweep):
    ax = plots.plot_accuracy_vs_adc_bits(plots.find_runs(adc_sweep)).axes[0]
    analog = [ln for ln in ax.lines if ln.get_label().startswith("analog_ff")]
    assert len(analog) == 1 and list(analog[0].get_xdata()) == [4, 8]
    assert list(analog[0].get_ydata()) == pytest.approx([20.0, 30.0])
    single = plots.plot_accuracy_vs_adc_bits([run]).axes[0]  # one setting: the point and a note
    assert any("one ADC setting" in t.get_text() for t in single.texts)


def test_plots_draw_into_a_given_axes(run):
    fig = Figure()
    ax = fig.add_subplot()
    assert plots.plot_accuracy_vs_energy([run], ax=ax) is fig and ax.collections


@pytest.mark.parametrize("fn", [plots.plot_accuracy_per_epoch, plots.plot_accuracy_vs_energy, plots.plot_drift,
                                plots.plot_accuracy_vs_adc_bits, plots.energy_breakdown_figure])
def test_no_runs_gives_a_no_data_figure(fn):
    fig = fn([])
    assert any(t.get_text().startswith("no data") for ax in fig.axes for t in ax.texts)


def test_skipped_drift_is_explained(run):
    quiet = json.loads(json.dumps(run))
    quiet["methods"]["analog_ff"]["drift"] = {"skipped": "profile 'x' has no [inference] noise_model"}
    ax = plots.plot_drift([quiet]).axes[0]
    assert not ax.lines and any("noise_model" in t.get_text() for t in ax.texts)


def test_save_all_writes_every_png(run, adc_sweep, tmp_path):
    paths = plots.save_all([run, *plots.find_runs(adc_sweep)], tmp_path / "figs")
    assert [p.name for p in paths] == [f"{n}.png" for n in plots.FIGURE_NAMES]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert len(plots.save_all([], tmp_path / "empty")) == len(plots.FIGURE_NAMES)


def test_save_all_draws_only_the_named_figures(run, tmp_path):
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "drift.png").write_bytes(b"keep")
    paths = plots.save_all([run], tmp_path / "figs", names=["layer_probes"])
    assert [p.name for p in paths] == ["layer_probes.png"]
    assert (tmp_path / "figs" / "drift.png").read_bytes() == b"keep"  # the others are left alone
    with pytest.raises(ValueError, match="unknown figure 'probes'"):
        plots.save_all([run], tmp_path / "figs", names=["probes"])


def test_figures_command_only(run_dir, tmp_path, capsys):
    from analogff.cli import main

    assert main(["figures", str(run_dir), "--out", str(tmp_path / "f"), "--only", "layer_probes"]) == 0
    assert [Path(p).name for p in capsys.readouterr().out.split()] == ["layer_probes.png"]
    assert main(["figures", str(run_dir), "--out", str(tmp_path / "g"), "--only", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and not (tmp_path / "g").exists()


def _make_figures():
    spec = importlib.util.spec_from_file_location("make_figures", ROOT / "experiments" / "make_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_make_figures_cli(run_dir, tmp_path, capsys):
    make_figures = _make_figures()
    assert make_figures([str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == len(plots.FIGURE_NAMES) and all(Path(p).is_file() for p in printed)
    assert make_figures([str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "absent" in err and not (tmp_path / "x").exists()


def test_notebook_executes_and_draws(run_dir, tmp_path, monkeypatch):
    # a kernel spec that runs this interpreter, found first through JUPYTER_PATH
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("ANALOGFF_RUNS", str(run_dir))
    path = ROOT / "notebooks" / "energy_accuracy.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it with outputs cleared"
    NotebookClient(nb, kernel_name="python3", timeout=120,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "1 run(s)" in "".join(o.get("text", "") for o in code[0].outputs)
    images = [c for c in code[1:] if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(images) == len(code) - 1 == len(plots.FIGURE_NAMES)


def test_accuracy_vs_energy_by_rule_colours_each_rule(run, tmp_path):
    """One point per (profile, rule): the recorded rule picks the colour; digital methods are stars."""
    import copy

    other = copy.deepcopy(run)
    other["methods"]["analog_ff"]["analog_update"] = "onarray"
    other["methods"]["analog_ff"]["train_energy_per_sample_J"] *= 0.5
    other["device_profile"]["name"] = "pcm_like_onarray"
    fig = plots.plot_accuracy_vs_energy_by_rule([run, other])
    ax = fig.axes[0]
    colours = {tuple(c.get_facecolor()[0][:3]) for c in ax.collections if len(c.get_offsets())}
    from matplotlib.colors import to_rgb

    assert to_rgb(plots.RULE_COLORS["onarray"]) in colours and to_rgb("black") in colours
    assert plots.analog_rule(other) == "onarray"
    assert "no data" not in " ".join(t.get_text() for t in ax.texts)


def test_layer_probes_draws_each_ff_methods_probes(run):
    """One line per FF method with probes (BP has none), y = 100 x the recorded accuracies."""
    import copy

    deep = copy.deepcopy(run)
    deep["methods"]["digital_ff"]["layer_probe_accuracy"] = [0.8, 0.85, 0.9]
    ax = plots.plot_layer_probes(deep).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert len(lines) == 2  # analog_ff (its real 1-layer probe) and digital_ff
    dff = next(ln for label, ln in lines.items() if label.startswith("digital FF") or "digital_ff" in label)
    assert list(dff.get_xdata()) == [1, 2, 3] and list(dff.get_ydata()) == pytest.approx([80, 85, 90])
    for m in deep["methods"].values():
        m.pop("layer_probe_accuracy", None)
    assert "no layer_probe_accuracy" in " ".join(t.get_text() for t in plots.plot_layer_probes(deep).axes[0].texts)


def test_layer_probes_of_one_method_get_a_colour_per_run(run):
    """Several runs of one method (a depth comparison): each run its own colour, not the method's."""
    import copy

    from matplotlib.colors import to_hex

    runs = []
    for k in range(3):
        r = copy.deepcopy(run)
        r["methods"] = {"digital_ff": {**r["methods"]["digital_ff"], "layer_probe_accuracy": [0.8, 0.8 - 0.01 * k]}}
        r["path"] = f"runs/deep{k}/results.json"
        runs.append(r)
    colours = {to_hex(ln.get_color()) for ln in plots.plot_layer_probes(runs).axes[0].get_lines()}
    assert len(colours) == 3
