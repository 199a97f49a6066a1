"""analogff report: the probes table (one row per FF method with probes, a column per layer)."""

from __future__ import annotations

from pathlib import Path

from analogff.options import options
from analogff.report import probes_table


def test_probes_table_has_a_column_per_layer_and_skips_methods_without_probes():
    run = {"dataset": "fashion_mnist", "methods": {
        "digital_ff": {"layer_probe_accuracy": [0.8, 0.85, 0.9], "variant": "supervised"},
        "analog_ff": {"layer_probe_accuracy": [0.7]},
        "digital_bp": {}}}
    lines = probes_table([(Path("runs/deep"), run)]).splitlines()
    assert lines[0].split("|")[5:-1] == [" layer 1 ", " layer 2 ", " layer 3 "]
    assert len(lines) == 4  # header, rule, two FF methods (BP has no probes)
    assert "80.00 %" in lines[2] and "90.00 %" in lines[2] and lines[3].count("|") == lines[2].count("|")
    assert probes_table([(Path("r"), {"methods": {"digital_bp": {}}})]) == ""


def test_hidden_widths_round_trip_as_nxk():
    opt = options()["hidden"]
    assert opt.format([500] * 8) == ["500x8"] and opt.format([784, 500, 500]) == ["784,500,500"]
    for widths in ([500] * 8, [1000, 500, 500, 500, 10], [32]):
        assert opt.parse(opt.format(widths)[0]) == widths


def test_command_uses_a_recipe_only_where_the_run_kept_all_its_values():
    from dataclasses import asdict

    from analogff.options import make_config
    from analogff.recipes import recipe_values
    from analogff.report import command

    res = Path("runs/x/results.json")
    fmnist = asdict(make_config(recipe_values("fmnist")))
    assert command({"config": fmnist}, res) == "analogff run --recipe fmnist --out runs/x"
    # the recipe's net at another alpha: spelled from the defaults, not as "--recipe fmnist --ff.alpha 0.5"
    other = asdict(make_config({**recipe_values("fmnist"), "ff.alpha": 0.5, "hidden": [500] * 8, "epochs": 10}))
    cmd = command({"config": other}, res)
    assert "--recipe" not in cmd and "--hidden 500x8" in cmd and "--ff.norm batch" in cmd, cmd
    full = asdict(make_config({**recipe_values("full"), "seed": 3}))
    assert command({"config": full}, res) == "analogff run --recipe full --seed 3 --out runs/x"
