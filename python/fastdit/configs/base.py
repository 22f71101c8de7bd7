"""What every component config shares: reading and writing diffusers' config.json, and preset look-up.

    @dataclasses.dataclass(frozen=True)
    class WanVAEConfig(DiffusersConfig):
        _diffusers_class = "AutoencoderKLWan"   # unannotated: a class attribute, not a dataclass field
        z_dim: int = 16
        ...

    config = WanVAEConfig.from_dict(read_config(folder))   # lists -> tuples, "_..." keys ignored
    config.to_dict()                                        # tuples -> lists, what diffusers' from_config takes
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_C = TypeVar("_C", bound="DiffusersConfig")
_V = TypeVar("_V")


class DiffusersConfig:
    """Mixin of the frozen config dataclasses whose fields are a diffusers config.json's keys.

    Subclasses set `_diffusers_class` (the config.json's "_class_name"), which the unknown-key error names.
    """

    _diffusers_class: str = ""

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        """From a config.json dict: keys starting with "_" (diffusers metadata such as _class_name) are
        ignored, unknown keys are one ValueError naming them and the allowed ones, and JSON lists become
        tuples (the config stays frozen and hashable)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if not k.startswith("_") and k not in fields)
        if unknown:
            name = cls._diffusers_class or cls.__name__
            raise ValueError(f"unknown {name} config keys {unknown}; allowed: {sorted(fields)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict (tuples as lists), which the diffusers class's from_config / __init__ accepts."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def lookup_preset(table: dict[str, _V], name: str, what: str) -> _V:
    """table[name], or a ValueError "unknown <what> preset <name>; built-in: [...]"."""
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; built-in: {sorted(table)}")
    return table[name]
