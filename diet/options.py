"""Options of a registered piece (a method, a scoring): declared beside it, set in its config file
(`conf/method/<name>.yaml`), checked by the piece that owns them, so config.py holds no list of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diet import DietError


@dataclass(frozen=True)
class Option:
    default: Any
    check: Callable[[Any], bool]
    allowed: str        # what the error line says is allowed


def resolve(group: str, name: str, declared: dict[str, Option], given: dict) -> dict:
    """`given` (the group's keys besides `name`) checked against `declared`; missing keys take their defaults."""
    for key in given:
        if key not in declared:
            allowed = ", ".join(f"{group}.{k}" for k in declared) or "none (it has no options)"
            raise DietError(f"{group}.{key}: unknown key for {group}={name}; allowed: {allowed}")
    values = {key: given.get(key, option.default) for key, option in declared.items()}
    for key, value in values.items():
        if not declared[key].check(value):
            raise DietError(f"{group}.{key}: {value!r} is not allowed with {group}={name}; allowed: "
                            f"{declared[key].allowed}")
    return values
