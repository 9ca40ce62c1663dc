"""The Train tab's form, generated from the config dataclasses: one widget per option, so a new option shows up
in the app without touching it.

The form holds plain widget values; this module converts between them and `Config`, and turns a form into the
`--set` overrides of a preset (only the keys that differ) or into a new preset (only the keys that differ from the
defaults, as the presets in presets/ are written).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from sdlora.config import Config, Option, config_from_dict, walk_options
from ui.fields import parse_number

# In view on the Train tab, in this order; every other option goes under "Advanced".
MAIN_KEYS = ["name", "model", "data.dir", "mode", "network.rank", "network.alpha", "train.steps",
             "train.batch_size", "train.lr", "data.resolution", "train.mixed_precision", "train.optimizer"]


@dataclass(frozen=True)
class Field:
    key: str  # dotted, as in presets and --set
    kind: str  # "choice" | "bool" | "int" | "float" | "str" | "list" | "mapping" | "records" (data.subsets)
    help: str
    default: Any
    choices: tuple = ()
    optional: bool = False  # None is a valid value (an empty widget)
    minimum: float | None = None
    maximum: float | None = None

    @property
    def section(self) -> str:
        return self.key.split(".")[0] if "." in self.key else ""


def _field_of(option: Option) -> Field:
    optional = False
    tp = option.type
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in typing.get_args(tp)
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    common = dict(key=option.key, help=option.help, default=option.default, optional=optional,
                  minimum=option.minimum, maximum=option.maximum)
    if origin is Literal:
        return Field(kind="choice", choices=typing.get_args(tp), **common)
    if origin is list:
        if dataclasses.is_dataclass(typing.get_args(tp)[0]):  # a list of sections: data.subsets
            return Field(kind="records", **common)
        return Field(kind="list", **common)
    if origin is dict:
        return Field(kind="mapping", **common)
    kind = {bool: "bool", int: "int", float: "float"}.get(tp, "str")
    return Field(kind=kind, **common)


def config_fields(cls: type = Config, prefix: str = "") -> list[Field]:
    """Every option of the config, depth first, in the dataclasses' order (sdlora.config's walker)."""
    return [_field_of(option) for option in walk_options(cls, prefix)]


def get_value(config: Config, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def to_widget(field: Field, value: Any) -> Any:
    """A config value as its widget shows it: lists one item a line, numbers as they are."""
    if field.kind == "list":
        return "\n".join(str(v) for v in value or [])
    if field.kind == "records":  # one YAML line per item, with the keys it sets: - {dir: data/dog, repeats: 2}
        return records_text(value)
    if field.kind == "mapping":  # one line of YAML flow style: {d_coef: 2, safeguard_warmup: true}
        return yaml.safe_dump(dict(value), default_flow_style=True, sort_keys=False).strip() if value else ""
    if field.kind in ("int", "float"):
        # A text box, read strictly (ui.fields): empty means "not set" where that is allowed (0 would not), and
        # an error otherwise; a browser number box would hand over "40O" as 40 and an empty box as the default.
        return "" if value is None else str(value)
    return value


def from_widget(field: Field, value: Any) -> Any:
    """A widget's value as the config wants it (validation happens in `config_from_dict`)."""
    if field.kind == "list":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if field.kind in ("int", "float"):
        return parse_number(value, field.key, field.kind, optional=field.optional)
    if field.kind in ("mapping", "records"):
        empty = {} if field.kind == "mapping" else []
        try:
            return yaml.safe_load(str(value or "")) or empty
        except yaml.YAMLError:
            return str(value)  # let validation name the key
    if value is None or (isinstance(value, str) and not value.strip() and field.kind != "str"):
        return None if field.optional else field.default
    return value


def config_to_widgets(fields: list[Field], config: Config) -> list[Any]:
    return [to_widget(f, get_value(config, f.key)) for f in fields]


def widgets_to_raw(fields: list[Field], values: list[Any]) -> dict[str, Any]:
    """The nested dict of a preset, holding every option of the form."""
    raw: dict[str, Any] = {}
    for field, value in zip(fields, values):
        node = raw
        *parents, last = field.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = from_widget(field, value)
    return raw


def widgets_to_config(fields: list[Field], values: list[Any]) -> Config:
    """Validate the form as a whole; a `SdloraError` names the key that is wrong."""
    return config_from_dict(widgets_to_raw(fields, values))


def overrides(base: Config, config: Config, fields: list[Field]) -> list[str]:
    """`--set KEY=VALUE` for every option where `config` differs from `base` (the preset as loaded).

    Values are written as JSON, which YAML reads back exactly: strings stay strings ("true", "123"), lists stay
    lists, floats keep their digits.
    """
    out = []
    for field in fields:
        value = get_value(config, field.key)
        if value != get_value(base, field.key):
            out.append(f"{field.key}={json.dumps(plain(value), ensure_ascii=False)}")
    return out


def plain(value: Any) -> Any:
    """A config value as YAML and JSON write it: each section of a list (data.subsets) as the keys it sets."""
    if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        return [{f.name: getattr(item, f.name) for f in dataclasses.fields(item)
                 if f.name == "dir" or getattr(item, f.name) != f.default} for item in value]
    return value


def records_text(value: list) -> str:
    """data.subsets as its form field shows it: one flow-style YAML mapping a line."""
    return "".join("- " + yaml.safe_dump(item, default_flow_style=True, sort_keys=False, allow_unicode=True,
                                         width=10_000).strip() + "\n" for item in plain(value or []))


def project_relative(value: Any, project: Path | None) -> Any:
    """An absolute path inside `project` as a path relative to it (how presets name folders); else unchanged.

    A preset in PROJECT/presets/ finds a relative folder from the project (`sdlora train` looks there), so the
    saved preset keeps working when the project is moved or checked out elsewhere.
    """
    if project is None or not isinstance(value, str) or not value or not Path(value).is_absolute():
        return value
    path, root = Path(value), Path(project)
    for base in dict.fromkeys([root, root.resolve()]):
        if path == base or base in path.parents:
            return path.relative_to(base).as_posix() or "."
    return value


def preset_yaml(config: Config, fields: list[Field], comment: str = "", project: Path | None = None) -> str:
    """A preset naming only what differs from the defaults, like the ones in presets/; paths inside `project`
    are written relative to it."""
    defaults = Config()
    raw: dict[str, Any] = {}
    for field in fields:
        value = project_relative(get_value(config, field.key), project) if field.kind == "str" else \
            get_value(config, field.key)
        if value == get_value(defaults, field.key) and field.key not in ("name", "model"):
            continue
        if field.kind == "records":
            value = [{k: project_relative(v, project) if k == "dir" else v for k, v in item.items()}
                     for item in plain(value)]
        node = raw
        *parents, last = field.key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    return head + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)
