"""Typed stage configs: YAML recipe sections + command-line overrides -> one dataclass.

Every stage module owns one dataclass named ``Config`` (``youri.data.corpus.Config``,
``youri.train.pretrain.Config``, ...). A recipe is a YAML file with one section per stage::

    data:
      seq_len: 512
      sources:
        - {path: builtin:corpus_ja.jsonl, lang: ja, weight: 9}
    pretrain:
      train: {lr: 3.0e-4}

``build_config(pretrain.Config, recipe["pretrain"], {"train.lr": 1e-4})`` validates every key against the
dataclass fields (recursively, lists of dataclasses included), coerces scalars from strings and
raises ``ConfigError`` naming the offending key -- with the closest valid spelling -- when a key is
unknown. The CLI derives one ``--flag`` per field from the same dataclass (``add_config_flags``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import math
import textwrap
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml

from youri.io import DataError, read_text


class ConfigError(ValueError):
    """A recipe or flag does not fit the stage's config dataclass."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field, declared as ``Annotated[int, Range(min=1)]``.

    ``min``/``max`` are inclusive unless ``min_open``/``max_open``; ``allow`` lists sentinel values that
    are accepted outside the range (``-1`` = never). Applies to each item of a list or mapping field.
    """

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    allow: tuple = ()

    def check(self, value: Any, where: str) -> None:
        if value is None or value in self.allow:
            return
        low = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high = self.max is None or (value < self.max if self.max_open else value <= self.max)
        if not (low and high):
            raise ConfigError(f"{where}: must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_open else '>='} {_number(self.min)}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_open else '<='} {_number(self.max)}")
        text = " and ".join(parts)
        return text + (f" (or {', '.join(map(repr, self.allow))})" if self.allow else "")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]  # 0 usually means "all" or "off"
PositiveFloat = Annotated[float, Range(min=0, min_open=True)]
NonNegativeFloat = Annotated[float, Range(min=0)]
UnitFloat = Annotated[float, Range(min=0, max=1)]  # a fraction or probability
Seed = Annotated[int, Range(min=0, max=2**32 - 1)]  # what numpy, torch and random all accept


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe: a mapping of stage section name -> mapping of fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        recipe = yaml.safe_load(read_text(path)) or {}
    except DataError as err:  # not UTF-8
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of stage sections, got {type(recipe).__name__}")
    for name, section in recipe.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{path}: section '{name}' must be a mapping of fields")
    return recipe


def build_config(cls: type, *layers: dict[str, Any] | None, where: str = "") -> Any:
    """Merge ``layers`` (later wins; dotted keys address nested fields) and build ``cls``."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            _set_dotted(merged, key, value)
    return _build(cls, merged, where or cls.__name__)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a config dataclass (the *resolved* config)."""
    return _plain(dataclasses.asdict(cfg))


def add_config_flags(parser, cls: type, prefix: str = "") -> None:
    """Add ``--field`` (and ``--nested.field``) for every field of ``cls``; values stay raw strings.

    Values are parsed later by ``build_config`` so that the recipe and the flags share one coercion
    path. Lists and mappings are given as YAML/JSON (``--sources '[{path: a.jsonl, lang: ja}]'``).
    """
    hints = typing.get_type_hints(cls)
    ranges = typing.get_type_hints(cls, include_extras=True)
    for field in dataclasses.fields(cls):
        name = prefix + field.name
        tp = _strip_optional(hints[field.name])
        if dataclasses.is_dataclass(tp):
            add_config_flags(parser, tp, prefix=name + ".")
            continue
        doc = _field_doc(cls, field.name)
        allowed = _range_of(ranges[field.name])
        doc += f" [{allowed.describe()}]" if allowed else ""
        default = _default_of(field)
        helptext = f"{doc} (default: {default!r})" if doc else f"default: {default!r}"
        helptext = helptext.replace("%", "%%")  # argparse %-formats help strings ("~30% more")
        if field.metadata.get("positional"):
            # A positional field (``youri chat MODEL``) may still come from the recipe, hence nargs="?".
            parser.add_argument(
                f"cfg:{name}", nargs="?", default=argparse.SUPPRESS, metavar=name.upper(), help=helptext
            )
        else:
            parser.add_argument(
                f"--{name}", dest=f"cfg:{name}", default=argparse.SUPPRESS, metavar=_metavar(tp), help=helptext
            )


def flag_overrides(namespace) -> dict[str, Any]:
    """Collect the ``--field`` values given on the command line (raw strings) as dotted overrides."""
    return {key[4:]: value for key, value in vars(namespace).items() if key.startswith("cfg:")}


# ----------------------------------------------------------------------------- internals


def _parse_yaml_text(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot parse {text!r} as YAML: {err}") from err


def _set_dotted(target: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"'{key}': '{part}' is not a section")
        target = node
    if isinstance(value, dict) and isinstance(target.get(parts[-1]), dict):
        for sub_key, sub_value in value.items():
            _set_dotted(target[parts[-1]], sub_key, sub_value)
    else:
        target[parts[-1]] = value


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")
    hints = typing.get_type_hints(cls, include_extras=True)  # with the Range annotations
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where}: {err}") from err


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _coerce(base, value, where)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, where)
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null", "~"}):
            return None
        return _coerce(args[0], value, where)
    if isinstance(value, str) and (origin in (list, tuple, dict) or dataclasses.is_dataclass(tp)):
        value = _parse_yaml_text(value, where)  # a flag value such as --sources '[{path: a, lang: ja}]'

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where)
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(item_tp, item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        value_tp = (typing.get_args(tp) or (Any, Any))[1]
        if value_tp in (int, float, bool) or typing.get_origin(value_tp) is Annotated:
            return {key: _coerce(value_tp, item, f"{where}.{key}") for key, item in value.items()}
        return dict(value)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    return _coerce_scalar(tp, value, where)


def _coerce_scalar(tp: type, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from err
        if tp is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if tp is float and not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _range_of(tp: Any) -> Range | None:
    """The ``Range`` declared on a field's type (through ``Optional``, and on a list's or mapping's items)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return next((extra for extra in typing.get_args(tp)[1:] if isinstance(extra, Range)), None)
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return next(filter(None, (_range_of(arg) for arg in typing.get_args(tp))), None)
    return None


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _metavar(tp: Any) -> str:
    tp = _strip_optional(tp)
    if typing.get_origin(tp) is typing.Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if typing.get_origin(tp) in (list, dict):
        return "YAML"
    return getattr(tp, "__name__", "VALUE").upper()


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return "required"


def _field_doc(cls: type, name: str) -> str:
    """Attribute docstrings (``x: int = 1`` followed by ``\"\"\"doc\"\"\"``) for ``--help``."""
    docs = cls.__dict__.get("__field_docs__")  # not getattr: a subclass must not see its base's cache
    if docs is None:
        docs = {}
        for klass in reversed(cls.__mro__):  # a subclass that re-declares a field inherits its base's doc
            docs.update(_parse_field_docs(klass) if dataclasses.is_dataclass(klass) else {})
        try:
            cls.__field_docs__ = docs
        except (AttributeError, TypeError):
            pass
    return docs.get(name, "")


def _parse_field_docs(cls: type) -> dict[str, str]:

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(getattr(nxt, "value", None), ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
