"""One recipe table: what each recipe means, used by analogff run and benchmarks/ff_mnist.py alike."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from analogff import cli
from analogff.ff import FFConfig
from analogff.options import make_config, options
from analogff.recipes import RECIPES, RecipeError, recipe_values

ROOT = Path(__file__).resolve().parents[1]


def test_every_recipe_is_a_valid_config():
    for name in RECIPES:
        cfg = make_config(recipe_values(name))
        assert cfg.batch_size == 100
        want = {"fmnist": [500] * 4, "mnist": [1000, 1000]}.get(name, [500, 500])  # the main job's net but two
        assert cfg.hidden == want
        assert set(recipe_values(name)) <= set(options())


def test_recipes_mean_what_the_readme_says():
    quick, default, full = (make_config(recipe_values(n)) for n in ("quick", "default", "full"))
    assert quick.epochs == 1 and default.epochs == 10 and full.epochs == 60
    assert quick.ff == default.ff  # quick is one epoch of default
    assert full.ff.shift == 2 and default.ff.shift == 0
    assert make_config(recipe_values("main")) == make_config({})  # main: the defaults (make demo)
    for rule, lr in (("sgd", 0.1), ("normalized", 3e-4), ("momentum", 0.01), ("adam", 1e-3)):
        cfg = make_config(recipe_values(f"rule-{rule}"))
        assert cfg.analog_update == rule and cfg.ff_lr_analog == lr and cfg.methods == ["analog_ff"]


@pytest.mark.parametrize("name, kept", [
    ("fmnist", "docs/results/deep/fmnist_500x4_40ep_bn_alpha/ff-alpha-0.25"),
    ("mnist", "docs/results/long/mnist_digital_ff_1000x2_shift2_alpha025_elastic17_60ep"),
])
def test_long_recipes_are_the_runs_they_name(name, kept):
    """The fmnist and mnist recipes train exactly what their kept result files trained (out and threads aside)."""
    import json
    from dataclasses import asdict

    kept = json.loads((ROOT / kept / "results.json").read_text())
    cfg = make_config({**recipe_values(name), "out": kept["config"]["out"]})
    mine = json.loads(json.dumps(asdict(cfg)))
    defaults = json.loads(json.dumps(asdict(FFConfig())))
    for key in set(mine["ff"]) - set(kept["config"]["ff"]):  # an option added after the run: it ran without it
        assert mine["ff"].pop(key) == defaults[key], key
    for key in ("threads", "jobs"):
        mine.pop(key, None), kept["config"].pop(key, None)
    assert mine == kept["config"]


def test_recipe_values_are_copies():
    recipe_values("quick")["methods"].append("digital_bp")
    assert "digital_bp" not in recipe_values("quick")["methods"]


def test_unknown_recipe_lists_the_known():
    with pytest.raises(RecipeError, match="quick, default, full"):
        recipe_values("fast")


def _ff_mnist():
    spec = importlib.util.spec_from_file_location("ff_mnist", ROOT / "benchmarks" / "ff_mnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv, want", [
    (["--quick"], {"epochs": 1, "methods": ["digital_ff"]}),
    ([], {"epochs": 60, "methods": ["digital_ff"]}),
    (["--recipe", "default", "--layer", "analog", "--device", "reram_es", "--update", "normalized", "--lr", "3e-4"],
     {"epochs": 10, "methods": ["analog_ff"], "device": "reram_es", "analog_update": "normalized",
      "ff_lr_analog": 3e-4}),
    (["--quick", "--dims", "784,1000,1000", "--train-samples", "1000", "--init-range", "0.6", "--seed", "1"],
     {"hidden": [1000, 1000], "train_limit": 1000, "seed": 1, "drift_times": []}),
])
def test_ff_mnist_is_a_thin_alias_of_analogff_run(argv, want):
    run_argv, _ = _ff_mnist().translate(argv)
    cfg = cli.run_configs(cli.run_parser().parse_args(run_argv))[0]
    for k, v in want.items():
        assert getattr(cfg, k) == v, k
    if "--init-range" in argv:
        assert cfg.ff.analog_init_range == 0.6
    assert cfg.ff.shift == (2 if cfg.epochs == 60 else 0)
