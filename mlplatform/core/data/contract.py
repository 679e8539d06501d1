"""The dataset contract: what a home's review files look like and what each column means.

A home's dataset is described by `$MLPLATFORM_HOME/dataset.toml`; without one, the packaged
`config/dataset.toml` describes the Women's clothing CSV exactly as the platform always read it. The
contract drives the whole platform — reading and validating drops, labels, the review id, facets, the
product key, the classes a model learns and answers — so it is loaded and checked once, before anything
runs, and every mistake in it is refused with one line naming the key. How to write one for your own
files (draft, edit, check, land) and what follows from each key: docs/data.md, "Bring your own data".

```toml
[dataset]
format = "csv"            # csv | tsv | parquet
header = true             # false: columns are named by column_names, in order
column_names = []         # only with header = false
unknown_columns = "refuse"  # a file column the contract does not name: "refuse" the drop, or "ignore" it

[columns."Review Text"]   # one table per source column, in the file's column order
role = "text"             # text | rating | label | product | facet | id | timestamp | extra
type = "string"           # string | int | float | bool | datetime
nullable = true
# min / max (numbers), allowed = [...], max_length (strings), unique = true: checks on every drop
# name = "..."            the normalised name (default: the source name in snake_case; "" is source_row;
#                         review_id, drop_hash, text, label and split are the platform's: DERIVED_NAMES)
# bins = [25, 35, ...]    facet numbers: banded into <name>_band ("<25", "25-34", ..., "65+")
# identity = false        left out of the content hash that identifies a review (volatile counters)

[labels]
classes = ["negative", "neutral", "positive"]                        # ordered; 2 to 10 classes
favourable = "positive"                                              # what bias metrics judge (as Clarify)
from_rating = { negative = [1, 2], neutral = [3], positive = [4, 5] } # with a rating column
# map = { "0" = "negative", "1" = "positive" }                       # with a label column
```

Roles: `text` columns are joined in their declared order into the model text (core/data/text.py);
`rating` or `label` is the one label source; `product` is the business key of the product report;
`facet` columns are judged for bias; `id` columns make the stable review id (without any, a content hash
of every column whose `identity` is true, in declared order); `timestamp` is when the review was written;
`extra` columns are carried along and otherwise unused.

Files: a drop's columns must be exactly the contract's — by name in any order with a header (Parquet:
source or normalised names), in `column_names` order without — unless `unknown_columns = "ignore"`,
which drops file columns the contract does not name. Missing contract columns are always refused
(core/data/schema.py reads drops; docs/lake.md).

A contract's `fingerprint` (a hash of its canonical form) is part of the code version of every asset it
affects, so changing it makes them stale. Drops already validated keep the contract they were accepted
under: a new contract applies to new drops (see docs/data.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import packaged_config_text

CONTRACT_FILE = "dataset.toml"
MIN_CLASSES, MAX_CLASSES = 2, 10
SOURCE_ROW = "source_row"
"""The normalised column holding each review's row in its file (added when the contract has none)."""


class ContractError(UserError, ValueError):
    """A dataset contract is malformed: the message names the key."""


class FileFormat(StrEnum):
    CSV = "csv"
    TSV = "tsv"
    PARQUET = "parquet"


class ColumnRole(StrEnum):
    TEXT = "text"
    RATING = "rating"
    LABEL = "label"
    PRODUCT = "product"
    FACET = "facet"
    ID = "id"
    TIMESTAMP = "timestamp"
    EXTRA = "extra"


class ColumnType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATETIME = "datetime"


class UnknownColumns(StrEnum):
    REFUSE = "refuse"
    IGNORE = "ignore"


DERIVED_NAMES: Mapping[str, tuple[ColumnRole | None, str]] = {
    "review_id": (ColumnRole.ID, "the review id"),
    "drop_hash": (None, "the drop a review came from"),
    "text": (ColumnRole.TEXT, "the model text"),
    "label": (ColumnRole.LABEL, "the class"),
    "split": (None, "the review's split"),
}
"""The columns the platform adds beside the contract's (the reviews table, the splits), each with the one
role a contract column may have under that name: its values become the derived column's (the one id
column is the review id, a text column is part of the model text, the label column is mapped to the
class). Under any other role the derived column would replace the file's values without a word."""


def derived_name_clash(name: str, role: ColumnRole, id_columns: int) -> str | None:
    """Why a column of `role` may not have the normalised name `name` (None: it may); `id_columns` is how
    many id columns the contract has (with several, the review id is their content hash)."""
    if name not in DERIVED_NAMES:
        return None
    allowed, meaning = DERIVED_NAMES[name]
    if role is allowed and not (role is ColumnRole.ID and id_columns > 1):
        return None
    only = f" (only the one {allowed.value} column may have it)" if allowed is not None else ""
    return f"has the name {name!r}, which the platform derives for {meaning}{only}"


_DATASET_KEYS = frozenset({"format", "header", "column_names", "unknown_columns"})
_COLUMN_KEYS = frozenset(
    {"role", "type", "nullable", "unique", "min", "max", "allowed", "max_length", "name", "bins", "identity"}
)
_LABEL_KEYS = frozenset({"classes", "favourable", "from_rating", "map"})
_TOP_KEYS = frozenset({"dataset", "columns", "labels"})
_NUMERIC = (ColumnType.INT, ColumnType.FLOAT)
_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class ColumnSpec:
    """One source column: where it is in the file, its normalised name, its meaning and its checks."""

    source: str
    name: str
    role: ColumnRole
    type: ColumnType
    nullable: bool = True
    unique: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[Any, ...] | None = None
    max_length: int | None = None
    bins: tuple[float, ...] | None = None
    identity: bool = True

    @property
    def band_name(self) -> str:
        """The derived column of a binned facet (age -> age_band)."""
        return f"{self.name}_band"

    @property
    def facet_column(self) -> str:
        """The column bias metrics group by: the band of a binned facet, else the column itself."""
        return self.band_name if self.bins else self.name


@dataclass(frozen=True)
class LabelRule:
    """How a review's class is found: its rating mapped by `from_rating`, or its label column by `map`."""

    classes: tuple[str, ...]
    favourable: str | None
    from_rating: Mapping[str, tuple[float, ...]] | None = None
    mapping: Mapping[str, str] | None = None

    def rating_classes(self) -> dict[float, str]:
        """Rating value -> class (with a rating column)."""
        assert self.from_rating is not None
        return {value: label for label, values in self.from_rating.items() for value in values}


@dataclass(frozen=True)
class DatasetContract:
    """A home's declared dataset (see the module docstring)."""

    format: FileFormat
    header: bool
    columns: tuple[ColumnSpec, ...]
    labels: LabelRule
    unknown_columns: UnknownColumns = UnknownColumns.REFUSE
    source: str = field(default="packaged default", compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # --- columns by role ------------------------------------------------------------------------

    def by_role(self, role: ColumnRole) -> tuple[ColumnSpec, ...]:
        return tuple(column for column in self.columns if column.role is role)

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Normalised names of the text columns, in the order they make the model text."""
        return tuple(column.name for column in self.by_role(ColumnRole.TEXT))

    @property
    def rating_column(self) -> str | None:
        found = self.by_role(ColumnRole.RATING)
        return found[0].name if found else None

    @property
    def label_column(self) -> str | None:
        found = self.by_role(ColumnRole.LABEL)
        return found[0].name if found else None

    @property
    def product_column(self) -> str | None:
        found = self.by_role(ColumnRole.PRODUCT)
        return found[0].name if found else None

    @property
    def timestamp_column(self) -> str | None:
        found = self.by_role(ColumnRole.TIMESTAMP)
        return found[0].name if found else None

    @property
    def facets(self) -> tuple[ColumnSpec, ...]:
        return self.by_role(ColumnRole.FACET)

    @property
    def facet_columns(self) -> tuple[str, ...]:
        """The columns bias is judged on (binned facets by their band)."""
        return tuple(column.facet_column for column in self.facets)

    @property
    def id_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.by_role(ColumnRole.ID))

    @property
    def identity_columns(self) -> tuple[str, ...]:
        """What identifies a review: the id columns, else every identity column in declared order."""
        return self.id_columns or tuple(column.name for column in self.columns if column.identity)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labels.classes

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(column.source for column in self.columns)

    @property
    def normalised_names(self) -> tuple[str, ...]:
        names = tuple(column.name for column in self.columns)
        return names if SOURCE_ROW in names else (SOURCE_ROW, *names)

    def column(self, name: str) -> ColumnSpec:
        """The column whose normalised name is `name`."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    # --- identity ---------------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A stable hash of what the contract says (not of how its file is spelled)."""
        canonical = json.dumps(_canonical(self), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The contract as plain data (`mlplatform dataset show --json`)."""
        return {"source": self.source, "fingerprint": self.fingerprint, **_canonical(self)}

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, source: str = "dataset.toml") -> DatasetContract:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ContractError(f"{source}: not valid TOML: {exc}") from exc
        return cls.from_mapping(raw, source)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "dataset.toml") -> DatasetContract:
        return _parse(raw, source)


def load_contract(path: Path | None = None) -> DatasetContract:
    """The contract at `path` (a home's dataset.toml) when it exists, else the packaged default."""
    if path is not None and path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ContractError(f"cannot read {path}: {exc}") from exc
        return DatasetContract.from_toml(text, str(path))
    return DatasetContract.from_toml(
        packaged_config_text(CONTRACT_FILE), "packaged default (config/dataset.toml)"
    )


def normalised_name(source: str) -> str:
    """A source column's default normalised name: snake_case ("Review Text" -> review_text; "" -> source_row)."""
    if source == "":
        return SOURCE_ROW
    split = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", source)  # camelCase -> camel_Case
    name = re.sub(r"[^0-9a-zA-Z]+", "_", split).strip("_").lower()
    if not name:
        return "column"
    return name if not name[0].isdigit() else f"c_{name}"


# --- parsing ------------------------------------------------------------------------------------------


def _parse(raw: Mapping[str, Any], source: str) -> DatasetContract:
    def fail(message: str) -> ContractError:
        return ContractError(f"{source}: {message}")

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(
            f"unknown key {sorted(unknown)[0]!r} (the contract has [dataset], [columns.*] and [labels])"
        )
    dataset = _table(raw, "dataset", fail)
    unknown = set(dataset) - _DATASET_KEYS
    if unknown:
        raise fail(f"unknown key [dataset] {sorted(unknown)[0]!r} (known: {sorted(_DATASET_KEYS)})")
    file_format = _enum(FileFormat, dataset.get("format", "csv"), "[dataset] format", fail)
    header = dataset.get("header", True)
    if not isinstance(header, bool):
        raise fail(f"[dataset] header must be true or false, got {header!r}")
    names = dataset.get("column_names", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise fail("[dataset] column_names must be a list of strings")
    if names and header:
        raise fail("[dataset] column_names is only for header = false")
    unknown_columns = _enum(
        UnknownColumns, dataset.get("unknown_columns", "refuse"), "[dataset] unknown_columns", fail
    )
    declared = _table(raw, "columns", fail)
    if not declared:
        raise fail("no [columns.*] table: declare every column of the file")
    if not header:
        if not names:
            raise fail("[dataset] header = false needs column_names (the columns' names, in file order)")
        if list(declared) != names:
            raise fail(f"[dataset] column_names {names} must list the [columns.*] tables in the same order")
    columns = tuple(_column(source_name, spec, fail) for source_name, spec in declared.items())
    _check_columns(columns, fail)
    labels = _labels(raw, columns, fail)
    return DatasetContract(file_format, header, columns, labels, unknown_columns, source, dict(raw))


def _table(raw: Mapping[str, Any], key: str, fail) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise fail(f"[{key}] must be a table")
    return value


def _enum(kind: type[StrEnum], value: Any, where: str, fail):
    try:
        return kind(value)
    except ValueError:
        raise fail(f"{where} must be one of {[member.value for member in kind]}, got {value!r}") from None


def _column(source_name: str, spec: Any, fail) -> ColumnSpec:
    where = f"[columns.{json.dumps(source_name)}]"
    if not isinstance(spec, Mapping):
        raise fail(f"{where} must be a table")
    unknown = set(spec) - _COLUMN_KEYS
    if unknown:
        raise fail(f"unknown key {where} {sorted(unknown)[0]!r} (known: {sorted(_COLUMN_KEYS)})")
    if "role" not in spec:
        raise fail(f"{where} has no role (one of {[role.value for role in ColumnRole]})")
    role = _enum(ColumnRole, spec["role"], f"{where} role", fail)
    kind = _enum(ColumnType, spec.get("type", "string"), f"{where} type", fail)
    nullable = spec.get("nullable", True)
    if not isinstance(nullable, bool):
        raise fail(f"{where} nullable must be true or false")
    name = spec.get("name", normalised_name(source_name))
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise fail(f"{where} name must be snake_case (letters, digits, underscores), got {name!r}")
    bounds = {}
    for key in ("min", "max"):
        if key in spec:
            if kind not in _NUMERIC:
                raise fail(f"{where} {key} is for int and float columns")
            if not isinstance(spec[key], int | float) or isinstance(spec[key], bool):
                raise fail(f"{where} {key} must be a number")
            bounds[key] = float(spec[key])
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise fail(f"{where} min {bounds['min']:g} is above max {bounds['max']:g}")
    allowed = spec.get("allowed")
    if allowed is not None and (not isinstance(allowed, list) or not allowed):
        raise fail(f"{where} allowed must be a non-empty list")
    max_length = spec.get("max_length")
    if max_length is not None and (
        kind is not ColumnType.STRING or not isinstance(max_length, int) or max_length < 1
    ):
        raise fail(f"{where} max_length is a positive integer, for string columns")
    bins = spec.get("bins")
    if bins is not None:
        if role is not ColumnRole.FACET or kind not in _NUMERIC:
            raise fail(f"{where} bins are for numeric facet columns")
        if not isinstance(bins, list) or not bins or any(lo >= hi for lo, hi in itertools.pairwise(bins)):
            raise fail(f"{where} bins must be a strictly increasing list of numbers")
        bins = tuple(float(edge) for edge in bins)
    identity = spec.get("identity", True)
    if not isinstance(identity, bool):
        raise fail(f"{where} identity must be true or false")
    unique = spec.get("unique", False)
    if not isinstance(unique, bool):
        raise fail(f"{where} unique must be true or false")
    if role is ColumnRole.TEXT and kind is not ColumnType.STRING:
        raise fail(f"{where} is a text column: its type must be string")
    if role is ColumnRole.RATING and kind not in _NUMERIC:
        raise fail(f"{where} is a rating column: its type must be int or float")
    return ColumnSpec(
        source=source_name,
        name=name,
        role=role,
        type=kind,
        nullable=nullable,
        unique=unique,
        min=bounds.get("min"),
        max=bounds.get("max"),
        allowed=tuple(allowed) if allowed is not None else None,
        max_length=max_length,
        bins=bins,
        identity=identity,
    )


def _check_columns(columns: Sequence[ColumnSpec], fail) -> None:
    names = [column.name for column in columns]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise fail(f"two columns normalise to the name {duplicated[0]!r}: give one a `name`")
    id_columns = sum(column.role is ColumnRole.ID for column in columns)
    for column in columns:
        clash = derived_name_clash(column.name, column.role, id_columns)
        if clash:
            raise fail(
                f"[columns.{json.dumps(column.source)}] {clash}: give it another `name`, "
                f'e.g. name = "{column.name}_column"'
            )
    derived = {column.band_name for column in columns if column.bins}
    clash = sorted(derived & set(names))
    if clash:
        raise fail(f"the band column {clash[0]!r} of a binned facet clashes with a declared column")
    if not any(column.role is ColumnRole.TEXT for column in columns):
        raise fail('no text column: declare at least one column with role = "text"')
    for role in (ColumnRole.RATING, ColumnRole.LABEL, ColumnRole.PRODUCT, ColumnRole.TIMESTAMP):
        found = [column.source for column in columns if column.role is role]
        if len(found) > 1:
            raise fail(f"two {role.value} columns ({found[0]!r}, {found[1]!r}): at most one")
    sources = [column.role for column in columns if column.role in (ColumnRole.RATING, ColumnRole.LABEL)]
    if len(sources) > 1:
        raise fail("two label sources (a rating and a label column): declare one")
    if not sources:
        raise fail('no label source: declare a column with role "rating" or "label"')


def _labels(raw: Mapping[str, Any], columns: Sequence[ColumnSpec], fail) -> LabelRule:
    labels = _table(raw, "labels", fail)
    unknown = set(labels) - _LABEL_KEYS
    if unknown:
        raise fail(f"unknown key [labels] {sorted(unknown)[0]!r} (known: {sorted(_LABEL_KEYS)})")
    classes = labels.get("classes")
    if not isinstance(classes, list) or not all(isinstance(label, str) and label for label in classes):
        raise fail("[labels] classes must be a list of class names")
    if len(set(classes)) != len(classes):
        raise fail(f"[labels] classes repeats a class: {classes}")
    if not MIN_CLASSES <= len(classes) <= MAX_CLASSES:
        raise fail(f"[labels] classes must name {MIN_CLASSES} to {MAX_CLASSES} classes, got {len(classes)}")
    favourable = labels.get("favourable")
    if favourable is not None and favourable not in classes:
        raise fail(f"[labels] favourable {favourable!r} is not one of the classes {classes}")
    has_rating = any(column.role is ColumnRole.RATING for column in columns)
    if "from_rating" in labels and "map" in labels:
        raise fail("[labels] has both from_rating and map: two label sources, declare one")
    if has_rating:
        if "map" in labels:
            raise fail("[labels] map is for a label column; with a rating column use from_rating")
        return LabelRule(tuple(classes), favourable, from_rating=_from_rating(labels, classes, fail))
    if "from_rating" in labels:
        raise fail('[labels] from_rating needs a column with role "rating"')
    return LabelRule(tuple(classes), favourable, mapping=_label_map(labels, classes, fail))


def _from_rating(labels: Mapping[str, Any], classes: Sequence[str], fail) -> dict[str, tuple[float, ...]]:
    rule = labels.get("from_rating")
    if not isinstance(rule, Mapping) or not rule:
        raise fail(
            "[labels] from_rating must map each class to its rating values, e.g. { negative = [1, 2] }"
        )
    seen: dict[float, str] = {}
    parsed: dict[str, tuple[float, ...]] = {}
    for label, values in rule.items():
        if label not in classes:
            raise fail(
                f"[labels] from_rating names {label!r}, which is not one of the classes {list(classes)}"
            )
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(value, int | float) and not isinstance(value, bool) for value in values)
        ):
            raise fail(f"[labels] from_rating.{label} must be a non-empty list of rating values")
        for value in values:
            if value in seen and seen[value] != label:
                raise fail(
                    f"[labels] from_rating maps the rating {value:g} to two classes ({seen[value]!r}, {label!r})"
                )
            seen[value] = label
        parsed[label] = tuple(float(value) for value in values)
    unreachable = [label for label in classes if label not in parsed]
    if unreachable:
        raise fail(f"[labels] class {unreachable[0]!r} is never reachable: no rating maps to it")
    return parsed


def _label_map(labels: Mapping[str, Any], classes: Sequence[str], fail) -> dict[str, str]:
    mapping = labels.get("map")
    if mapping is None:  # the label column holds the class names themselves
        return {label: label for label in classes}
    if not isinstance(mapping, Mapping) or not mapping:
        raise fail('[labels] map must map label values to classes, e.g. { "0" = "negative" }')
    for value, label in mapping.items():
        if label not in classes:
            raise fail(
                f"[labels] map sends {value!r} to {label!r}, which is not one of the classes {list(classes)}"
            )
    unreachable = [label for label in classes if label not in set(mapping.values())]
    if unreachable:
        raise fail(f"[labels] class {unreachable[0]!r} is never reachable: no label value maps to it")
    return dict(mapping)


def _canonical(contract: DatasetContract) -> dict[str, Any]:
    labels = contract.labels
    return {
        "dataset": {
            "format": contract.format.value,
            "header": contract.header,
            "unknown_columns": contract.unknown_columns.value,
        },
        "columns": [
            {
                "source": column.source,
                "name": column.name,
                "role": column.role.value,
                "type": column.type.value,
                "nullable": column.nullable,
                "unique": column.unique,
                "min": column.min,
                "max": column.max,
                "allowed": list(column.allowed) if column.allowed is not None else None,
                "max_length": column.max_length,
                "bins": list(column.bins) if column.bins is not None else None,
                "identity": column.identity,
            }
            for column in contract.columns
        ],
        "labels": {
            "classes": list(labels.classes),
            "favourable": labels.favourable,
            "from_rating": {label: list(values) for label, values in labels.from_rating.items()}
            if labels.from_rating is not None
            else None,
            "map": dict(labels.mapping) if labels.mapping is not None else None,
        },
    }
