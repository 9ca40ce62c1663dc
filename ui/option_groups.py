"""The headings of the Train tab's Advanced section: each recipe option under its group (sdlora.config.GROUPS:
Optimizer, Schedule, Noise and loss, EMA, Validation, Logging, ...), every other option under its config section.

Which group an option belongs to is said once, by `opt(group=...)` next to its definition in sdlora/config.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdlora.config import GROUPS
from ui.config_form import Field

# The groups take the place of this section, whose options they all hold.
GROUPS_REPLACE = "train"


@dataclass(frozen=True)
class Heading:
    name: str  # a group of GROUPS ("Noise and loss") or a config section ("data"; "model" for top-level keys)
    is_group: bool
    fields: list[Field]

    @property
    def elem_id(self) -> str:
        if not self.is_group:
            return f"train-section-{self.name}"
        return "train-group-" + re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def headings(fields: list[Field]) -> list[Heading]:
    """`fields` under their headings, each field under exactly one: the sections in the config's order, the groups
    (in GROUPS' order) where the train section would be."""
    by_group: dict[str, list[Field]] = {name: [] for name in GROUPS}
    by_section: dict[str, list[Field]] = {}
    for f in fields:
        if f.group:
            by_group[f.group].append(f)
        else:
            by_section.setdefault(f.section or "model", []).append(f)
    out = []
    for section in dict.fromkeys([f.section or "model" for f in fields] + [GROUPS_REPLACE]):
        if section == GROUPS_REPLACE:
            out += [Heading(name, True, group_fields) for name, group_fields in by_group.items() if group_fields]
        if by_section.get(section):
            out.append(Heading(section, False, by_section[section]))
    return out
