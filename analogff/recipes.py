"""Named recipes: the one table of what ``analogff run --recipe NAME`` (and the benchmarks) train.

A recipe is a set of option values (keys of :func:`analogff.options.options`) applied over the
config's defaults; flags given explicitly override it. ``main`` is the defaults themselves (the
main job, ``make demo``).

    values = recipe_values("quick")            # {"epochs": 1, "methods": [...]}
    cfg = make_config({**values, "seed": 1})   # analogff.options.make_config
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FF_METHODS = ["analog_ff", "digital_ff"]


@dataclass(frozen=True)
class Recipe:
    description: str
    values: dict[str, Any] = field(default_factory=dict)


#: name -> recipe. The FF recipes (quick, default, full) are FFConfig() on 784-500-500, batch 100:
#: SymBa loss (alpha 0.5 on the summed goodness), hard negatives from the softmax head's neutral pass,
#: length normalisation, Adam 1e-3 (analog: the periphery's Adam, transferred row by row) decaying
#: linearly to 0 over the second half of training. The rule-* recipes are the main job's analog FF
#: with another periphery update rule at the learning rate that suits it. ``fmnist`` is the best
#: digital FF recipe measured on Fashion-MNIST, ``mnist`` on MNIST (docs/networks.md, "Longer training").
RECIPES: dict[str, Recipe] = {
    "main": Recipe("the main job (make demo): analog FF, digital FF and digital BP, 784-500-500, 3 epochs"),
    "quick": Recipe("one epoch of the default recipe (analog and digital FF)",
                    {"epochs": 1, "methods": FF_METHODS}),
    "default": Recipe("FF recipe: analog and digital FF, 784-500-500, 10 epochs",
                      {"epochs": 10, "methods": FF_METHODS}),
    "full": Recipe("the full digital FF recipe: 60 epochs with random shifts of up to 2 pixels",
                   {"epochs": 60, "methods": ["digital_ff"], "ff.shift": 2}),
    "fmnist": Recipe("digital FF on Fashion-MNIST: 784-500x4, batch norm, SymBa alpha 0.25, 40 epochs",
                     {"dataset": "fashion_mnist", "methods": ["digital_ff"], "hidden": [500, 500, 500, 500],
                      "epochs": 40, "ff.norm": "batch", "ff.alpha": 0.25}),
    "mnist": Recipe("digital FF on MNIST: 784-1000-1000, SymBa alpha 0.25, shifts of 2 pixels and elastic "
                    "distortions (17, sigma 4), 60 epochs",
                    {"methods": ["digital_ff"], "hidden": [1000, 1000], "epochs": 60, "ff.shift": 2,
                     "ff.alpha": 0.25, "ff.elastic": 17.0, "drift_times": []}),
    "rule-sgd": Recipe("main job's analog FF with plain pulsed SGD (no digital state), lr 0.1",
                       {"methods": ["analog_ff"], "analog_update": "sgd", "ff_lr_analog": 0.1}),
    "rule-normalized": Recipe("main job's analog FF, pulsed update with d rescaled (RMS(d^T x) = 1), lr 3e-4",
                              {"methods": ["analog_ff"], "analog_update": "normalized", "ff_lr_analog": 3e-4}),
    "rule-momentum": Recipe("main job's analog FF, momentum in the periphery transferred row by row, lr 0.01",
                            {"methods": ["analog_ff"], "analog_update": "momentum", "ff_lr_analog": 0.01}),
    "rule-adam": Recipe("main job's analog FF with the default rule (periphery Adam, row by row), lr 1e-3",
                        {"methods": ["analog_ff"], "analog_update": "adam", "ff_lr_analog": 1e-3}),
}


class RecipeError(ValueError):
    """An unknown recipe; the message lists the known ones."""


def recipe_values(name: str | None) -> dict[str, Any]:
    """The option values of a recipe (a copy); None or "main": none."""
    if name is None:
        return {}
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return {k: (list(v) if isinstance(v, list) else v) for k, v in RECIPES[name].values.items()}


def recipe_help() -> str:
    return "; ".join(f"{name}: {r.description}" for name, r in RECIPES.items())
