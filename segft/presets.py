"""Named starting points for a study's training settings; explicit parameters override them.

``protocol`` is the original study (100 epochs, batch 4, learning rate 1e-5: the dataclass defaults).
``quick`` makes the whole built-in study finish in minutes on a 2-core CPU while still showing the study's
findings: batch 8, learning rate 1e-3, 5 epochs, and fine-tuning with the encoder frozen (smp-style, every
normalization layer's statistics included), because at that learning rate full fine-tuning forgot Dataset 1
almost entirely on the built-in data. Its measured time and results are in the README ("Results").
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
        "freeze": "encoder",
    },
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
