"""Named starting points for a study's training settings; explicit parameters override them.

``protocol`` is the original study (100 epochs, batch 4, learning rate 1e-5: the dataclass defaults).
``quick`` makes the whole built-in study finish in minutes on a 2-core CPU: batch 8, 5 epochs, base training at
learning rate 1e-3, and the recipe chosen on validation images over all three data sets, the hard shift included
(``benchmarks/results/recipe_choice.json``, README "Choosing the recipe"): every image normalized by its distance
from its median (``deviation``: blind to the sign of the contrast, so that dark nuclei on a bright field look like
bright nuclei on black), fine-tuning at 1e-4 with nothing frozen, and BCE in every branch of the dynamic loss (base
training too). Of seven recipes it had the fewest fine-tuned runs flagged as degenerate on their selection images
(2 of 12, both on the fluorescence-to-brightfield shift, where fine-tuning under-segments Dataset 1), then the
best validation Dice; none of the seven had none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from segft.config import TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    "protocol": {},
    "quick": {
        "epochs": 5,
        "batch_size": 8,
        "lr": 1e-3,
        "normalization": "deviation",
        "finetune_lr": 1e-4,
        "freeze": "none",
        "bce_in_every_branch": True,
    },
}
#: Why ``quick`` sets each of its values (the README's preset table, ``benchmarks/readme_tables.py``, shows them).
QUICK_REASONS: dict[str, str] = {
    "epochs": "minutes, not hours, for the whole built-in study on a 2-core CPU",
    "batch_size": "fewer optimizer steps per epoch on a CPU",
    "lr": "training that starts from no model (base, scratch): 5 epochs need a larger step",
    "normalization": "the chosen recipe (`recipe_choice.json`): blind to the sign of the contrast, it lets "
                     "fine-tuning learn the brightfield shift",
    "finetune_lr": "the chosen recipe: smaller steps from a base model (the one recipe fine-tuning at 1e-3 scored "
                   "lower, with more flagged runs)",
    "freeze": "the chosen recipe: nothing frozen (freezing the normalization layers had the most flagged runs)",
    "bce_in_every_branch": "the chosen recipe: a higher validation Dice than the original rule with the same "
                           "normalization",
}


def with_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """``config`` (a dataclass, nested ones included) with the named leaf fields replaced.

    Raises:
        KeyError: If a name is no leaf field of ``config``.
    """
    remaining = dict(overrides)

    def replace(node: Any) -> Any:
        changes = {}
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            if dataclasses.is_dataclass(value):
                changes[field.name] = replace(value)
            elif field.name in remaining:
                changes[field.name] = remaining.pop(field.name)
        return dataclasses.replace(node, **changes)

    result = replace(config)
    if remaining:
        raise KeyError(f"unknown settings {sorted(remaining)}")
    return result


def preset_train_config(name: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The training settings of preset ``name``, then ``overrides`` on top.

    Raises:
        KeyError: If there is no such preset; the message lists the valid names.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return with_overrides(TrainConfig(), {**PRESETS[name], **(overrides or {})})
