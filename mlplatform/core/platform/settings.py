"""Platform settings: packaged defaults (config/platform.toml) merged with the home's overrides, validated
at once into typed sections.

Every threshold and tunable lives in exactly one place: a key of config/platform.toml, whose comments
are its documentation and whose value is its default (nothing here repeats a default). A deployment
overrides any key by writing the same key into `$MLPLATFORM_HOME/platform.toml`.

Each table of the file is a pydantic model below (`Settings.gates` is a `GateRules`, ...): its fields
are the table's keys with their types and ranges (shares in [0, 1], positive intervals and sizes,
choices as enums, WARN bounds at most their ERROR bounds), and the model *is* the rules the code runs
by; the few with behaviour (`ClassFloors.floor`, `ScoringRules.parallel_runs`, ...) carry it as
methods. A test holds the file and the models to the same keys, both ways.

`Settings.load` is the one door: it refuses unknown keys and keys that moved to the dataset contract
(`MOVED_TO_CONTRACT`), except in the tables a deployment may extend (`OPEN_TABLES`), then validates every
section at once and raises `SettingsError` with one line naming each bad section and key, e.g.
`[gates] min_macro_f1: must be between 0 and 1, got 5`. It is called only at the edges (the command
line, the runner, the server, the Dagster definitions and resources, the benchmarks), before anything
runs; core receives the typed sections as arguments and never reads a file to find them.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from mlplatform.core.platform.errors import UserError


class SettingsError(UserError, ValueError):
    """A settings file is unreadable, names a key the platform does not know, or gives a key a value of
    the wrong type or range (one line naming the section and key)."""


def packaged_config_text(name: str) -> str:
    return resources.files("mlplatform.config").joinpath(name).read_text(encoding="utf-8")


OPEN_TABLES = frozenset({"gates.min_class_recall."})
"""Tables whose keys a deployment may add (they name things of its own, e.g. its classes)."""
MOVED_TO_CONTRACT = {
    "features.facets": 'declare facet columns in dataset.toml (role = "facet")',
    "features.age_band_edges": "declare `bins` on the facet column in dataset.toml",
}
"""Settings that describe the data and moved to the dataset contract, with where they went."""


# ---- value types ----------------------------------------------------------------------------------


def _range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> AfterValidator:
    """A value in [low, high] (either end open), said in words when it is not."""
    if low_open and high_open:
        words = f"must be above {low:g} and below {high:g}"
    elif high_open:
        words = f"must be at least {low:g} and below {high:g}"
    elif low_open:
        words = f"must be above {low:g} and at most {high:g}"
    else:
        words = f"must be between {low:g} and {high:g}"

    def check(value: float) -> float:
        below = value <= low if low_open else value < low
        above = value >= high if high_open else value > high
        if below or above or math.isnan(value):
            raise ValueError(words)
        return value

    return AfterValidator(check)


Share = Annotated[float, _range(0.0, 1.0)]
"""A share or a probability: [0, 1]."""
OpenShare = Annotated[float, _range(0.0, 1.0, low_open=True, high_open=True)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CRON_FIELDS = 5


class Approval(StrEnum):
    """`[registry] approval`: who approves a model that passed every blocking gate."""

    AUTO = "auto"
    MANUAL = "manual"


class Executor(StrEnum):
    """`[execution] executor`: how pipeline_job's steps run (mlplatform/defs/execution.py)."""

    IN_PROCESS = "in_process"
    MULTIPROCESS = "multiprocess"
    DASK = "dask"


class DeploymentStrategy(StrEnum):
    """`[deployment] strategy`: what sentiment_endpoint does with a new version once production exists
    (core/release/rollout.py)."""

    DIRECT = "direct"
    SHADOW = "shadow"
    CANARY = "canary"


MAX_PERCENT = 100


def _canary_percents(values: tuple[int, ...]) -> tuple[int, ...]:
    """Strictly increasing whole percents of traffic in 1-100 (the canary's steps)."""
    if not values:
        raise ValueError("must list percents of traffic, e.g. [5, 25, 50, 100]")
    if any(not 1 <= value <= MAX_PERCENT for value in values):
        raise ValueError("must be whole percents from 1 to 100")
    if any(later <= earlier for earlier, later in itertools.pairwise(values)):
        raise ValueError("must increase step by step")
    return values


CanarySteps = Annotated[tuple[int, ...], Field(strict=False), AfterValidator(_canary_percents)]
"""A canary's percents: strictly increasing, 1-100 (a TOML array)."""


def _choice() -> Any:
    # A choice key is a string in TOML: accepted as its enum's value (strict mode would want the member).
    return Field(strict=False)


# ---- sections -------------------------------------------------------------------------------------


class Section(BaseModel):
    """One table of platform.toml: every key typed and required (the packaged file gives each a value),
    no key it does not name. Immutable; `replace` makes a validated copy with some keys changed."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    SECTION: ClassVar[str]

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes`, validated as a home's file would be (SettingsError otherwise)."""
        try:
            return type(self).model_validate({**dict(self), **changes})
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, self.SECTION.split("."), type(self))) from None


class LakeRules(Section):
    SECTION = "lake"
    settle_seconds: NonNegativeFloat


class StorageRules(Section):
    """Where bytes live: a URL per kind, "" for the home's own directory (core/platform/storage.py)."""

    SECTION = "storage"
    lake: str
    artifacts: str
    registry: str
    capture: str

    def urls(self) -> tuple[str, ...]:
        """Every configured URL (the ones whose credentials no message may show)."""
        return tuple(url for url in (self.lake, self.artifacts, self.registry, self.capture) if url.strip())


class AutomationRules(Section):
    SECTION = "automation"
    landing_sensor_interval_s: PositiveInt
    automation_interval_s: PositiveInt


class IngestRules(Section):
    """The thresholds of the blocking checks of every drop and the validation chunk size."""

    SECTION = "ingest"
    max_missing_text_share: Share
    max_duplicate_row_share: Share
    min_rows: NonNegativeInt
    chunk_rows: PositiveInt


class BiasBounds(Section):
    """`[features.bias_warn]`: a bound per pre-training bias metric (core/data/bias.py)."""

    SECTION = "features.bias_warn"
    class_imbalance: Share
    dpl: Share
    kl: NonNegativeFloat
    js: NonNegativeFloat
    tvd: Share
    ks: Share

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in self}


class FeatureRules(Section):
    """The thresholds that judge the reviews (the dataset contract describes them)."""

    SECTION = "features"
    min_facet_rows: PositiveInt
    label_shift_warn_js: NonNegativeFloat
    bias_warn: BiasBounds


class SplitRules(Section):
    SECTION = "splits"
    validation_share: OpenShare
    test_share: OpenShare
    proportion_tolerance: Annotated[float, _range(0.0, 1.0, high_open=True)]
    proportion_sigmas: NonNegativeFloat
    salt: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _leaves_train(self) -> Self:
        if self.validation_share + self.test_share >= 1:
            raise ValueError(
                f"validation_share {self.validation_share} and test_share {self.test_share} must leave a "
                "share for train (their sum below 1)"
            )
        return self

    def target_shares(self) -> dict[str, float]:
        """The intended share of each split."""
        train = 1.0 - self.validation_share - self.test_share
        return {"train": train, "validation": self.validation_share, "test": self.test_share}


class ServingRules(Section):
    """The real-time endpoint (mlplatform/serving/)."""

    SECTION = "serving"
    model_name: str
    max_batch: PositiveInt
    explain_top_k: PositiveInt
    max_body_bytes: PositiveInt
    max_concurrency: PositiveInt
    header_timeout_s: PositiveFloat
    body_timeout_s: PositiveFloat
    inline_max_body_bytes: NonNegativeInt
    worker_threads: PositiveInt
    max_request_id_chars: PositiveInt
    swap_poll_interval_s: PositiveFloat
    refused_model_retry_s: PositiveFloat
    graceful_shutdown_s: NonNegativeFloat
    capture_sample_rate: Share
    capture_fsync_max_delay_ms: NonNegativeFloat
    capture_batch_max_records: PositiveInt
    capture_durable_timeout_s: PositiveFloat
    capture_retry_s: PositiveFloat
    capture_inline_sync_max_ms: NonNegativeFloat
    capture_inline_warmup_syncs: NonNegativeInt
    capture_inline_stall_ms: NonNegativeFloat
    capture_inline_cooldown_s: NonNegativeFloat
    capture_segment_max_bytes: PositiveInt
    capture_segment_max_age_s: PositiveFloat
    capture_segment_preallocate_bytes: NonNegativeInt
    dashboard_refresh_s: PositiveFloat
    dashboard_max_versions: PositiveInt
    dashboard_max_rows: PositiveInt
    health_window_s: PositiveInt

    @field_validator("model_name")
    @classmethod
    def _route_safe(cls, name: str) -> str:
        if not _MODEL_NAME.fullmatch(name):
            raise ValueError("must be a name for the routes: letters, digits, '.', '_' or '-'")
        return name

    @property
    def model_path(self) -> str:
        """The Open Inference Protocol routes of the model: `/v2/models/<model_name>`."""
        return f"/v2/models/{self.model_name}"

    @property
    def infer_path(self) -> str:
        return f"{self.model_path}/infer"


class RegistryRules(Section):
    SECTION = "registry"
    approval: Approval = _choice()

    @property
    def auto_approve(self) -> bool:
        return self.approval is Approval.AUTO


class ScoringRules(Section):
    """How predictions are run (core/scoring/)."""

    SECTION = "scoring"
    chunk_rows: PositiveInt
    threads: NonNegativeInt
    run_max_rows: PositiveInt
    run_max_chars: PositiveInt
    legacy_run_rows: PositiveInt

    @property
    def parallel_runs(self) -> int:
        return self.threads if self.threads > 0 else (os.cpu_count() or 1)


DEFAULT_FLOOR = "default"


class ClassFloors(RootModel[dict[str, Share]]):
    """`[gates.min_class_recall]`: a `default` recall floor for every class, and floors for named classes
    (an open table: a deployment names its own classes)."""

    model_config = ConfigDict(strict=True, frozen=True)
    SECTION: ClassVar[str] = "gates.min_class_recall"

    @model_validator(mode="after")
    def _has_default(self) -> Self:
        if DEFAULT_FLOOR not in self.root:
            raise ValueError("needs `default`, the floor of every class not named in it")
        return self

    @classmethod
    def of(cls, default: float, by_class: Mapping[str, float] | None = None) -> ClassFloors:
        """Floors from Python (validated as the table would be)."""
        try:
            return cls.model_validate({DEFAULT_FLOOR: default, **(by_class or {})})
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, cls.SECTION.split("."), cls)) from None

    @property
    def default(self) -> float:
        return self.root[DEFAULT_FLOOR]

    @property
    def by_class(self) -> dict[str, float]:
        return {name: floor for name, floor in self.root.items() if name != DEFAULT_FLOOR}

    def floor(self, label: str) -> float:
        return self.by_class.get(label, self.default)

    def for_classes(self, classes: Sequence[str]) -> dict[str, float]:
        """The floor of each of `classes`."""
        return {label: self.floor(label) for label in classes}

    def unused(self, classes: Sequence[str]) -> list[str]:
        """Named floors for classes not among `classes` (not applied; the gate lists them)."""
        return sorted(set(self.by_class) - set(classes))


class GateRules(Section):
    """Thresholds of the best_model gates."""

    SECTION = "gates"
    min_macro_f1: Share
    min_class_recall: ClassFloors
    max_macro_f1_drop: Share
    max_p99_latency_ms: PositiveFloat
    max_model_size_bytes: PositiveInt
    max_recall_gap: Share
    max_predicted_rate_gap: Share


class DriftBounds(Section):
    """`[monitoring.drift_warn]` or `[monitoring.drift_error]`: a bound per drift metric."""

    SECTION = "monitoring.drift_*"
    predicted_class_psi: NonNegativeFloat
    predicted_class_js: NonNegativeFloat
    length_psi: NonNegativeFloat
    length_ks: Share
    oov_rate_increase: Share
    short_text_share_increase: Share

    def bound(self, metric: str) -> float:
        """The bound of `metric` (one of the field names, `DRIFT_METRICS` in core/monitoring/rules.py)."""
        if metric not in type(self).model_fields:
            raise KeyError(metric)
        return float(getattr(self, metric))


class BiasDriftRules(Section):
    """`[monitoring.bias_drift]`: predicted-class rates per facet value on live traffic against the
    production model's test rates (core/monitoring/bias_drift.py)."""

    SECTION = "monitoring.bias_drift"
    min_rows: PositiveInt
    warn: Share
    error: Share
    catalogue_min_purity: Annotated[float, _range(0.0, 1.0, low_open=True)]

    @model_validator(mode="after")
    def _warn_at_most_error(self) -> Self:
        if self.warn > self.error:
            raise ValueError(f"warn {self.warn} must be at most error {self.error}")
        return self


class MonitoringRules(Section):
    """Drift, live quality, the product report and system health on what the endpoint captured."""

    SECTION = "monitoring"
    min_rows: PositiveInt
    length_bins: Annotated[int, Field(ge=2)]
    short_text_chars: NonNegativeInt
    psi_floor_share: OpenShare
    min_labelled_rows: PositiveInt
    max_macro_f1_drop: Share
    min_product_predictions: PositiveInt
    wilson_z: PositiveFloat
    report_top_n: PositiveInt
    report_ngrams: NonNegativeInt
    max_error_rate: Share
    max_p99_latency_ms: PositiveFloat
    schedule_cron: str
    drift_warn: DriftBounds
    drift_error: DriftBounds
    bias_drift: BiasDriftRules

    @field_validator("schedule_cron")
    @classmethod
    def _five_fields(cls, cron: str) -> str:
        if len(cron.split()) != _CRON_FIELDS:
            raise ValueError("must be a cron expression of 5 fields (minute hour day month weekday)")
        return cron

    @model_validator(mode="after")
    def _warn_at_most_error(self) -> Self:
        above = [
            f"drift_warn.{metric} {self.drift_warn.bound(metric)} exceeds drift_error.{metric} "
            f"{self.drift_error.bound(metric)}"
            for metric in DriftBounds.model_fields
            if self.drift_warn.bound(metric) > self.drift_error.bound(metric)
        ]
        if above:
            raise ValueError(f"each WARN bound must be at most its ERROR bound: {', '.join(above)}")
        return self


class AlertRules(Section):
    """Alert records and the optional webhook (URL from MLPLATFORM_ALERT_WEBHOOK)."""

    SECTION = "alerts"
    webhook_timeout_s: PositiveFloat
    max_message_chars: PositiveInt


class DeploymentRules(Section):
    """sentiment_endpoint: where the production model serves and how its smoke test is judged.

    `endpoint_url` is None when the file says "" (no live endpoint: smoke-test in-process), else the URL
    without a trailing slash."""

    SECTION = "deployment"
    endpoint_url: str | None
    wait_timeout_s: PositiveFloat
    poll_interval_s: PositiveFloat
    request_timeout_s: PositiveFloat
    smoke_max_latency_ms: PositiveFloat
    lock_timeout_s: PositiveFloat
    strategy: DeploymentStrategy = _choice()
    canary_steps: CanarySteps

    @field_validator("endpoint_url")
    @classmethod
    def _http_or_none(cls, url: str | None) -> str | None:
        url = (url or "").strip().rstrip("/")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError('must start with http:// or https:// (or be "" for none)')
        return url or None


class RolloutRules(Section):
    """`[rollout]`: how a shadow or canary rollout is judged on its live window
    (core/monitoring/rollout_judgement.py) and how the endpoint's shadow worker runs (serving/rollout.py).
    The strategy and the canary's steps are `[deployment]`'s."""

    SECTION = "rollout"
    min_rows: PositiveInt
    min_step_s: NonNegativeFloat
    min_agreement: Share
    max_class_share_gap: Share
    max_error_rate: Share
    max_p99_latency_ms: PositiveFloat
    max_macro_f1_drop: Share
    judge_interval_s: PositiveInt
    shadow_queue_max: PositiveInt
    shadow_batch_ms: NonNegativeFloat
    shadow_nice: Annotated[int, Field(ge=0, le=19)]


class ExecutionRules(Section):
    """How runs execute (mlplatform/defs/execution.py)."""

    SECTION = "execution"
    executor: Executor = _choice()
    max_concurrent: NonNegativeInt
    max_concurrent_training: PositiveInt
    dask_scheduler_address: str
    max_step_retries: NonNegativeInt
    retry_delay_s: NonNegativeFloat
    max_run_retries: NonNegativeInt
    run_monitoring_interval_s: PositiveInt
    deployment_pool_limit: PositiveInt
    max_concurrent_runs: PositiveInt

    @field_validator("dask_scheduler_address")
    @classmethod
    def _stripped(cls, address: str) -> str:
        return address.strip()


# ---- the whole file -------------------------------------------------------------------------------


class Settings(BaseModel):
    """Every section of platform.toml, validated. Build it with `load` (or `with_overrides` in tests)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    lake: LakeRules
    storage: StorageRules
    automation: AutomationRules
    ingest: IngestRules
    features: FeatureRules
    splits: SplitRules
    serving: ServingRules
    registry: RegistryRules
    scoring: ScoringRules
    gates: GateRules
    monitoring: MonitoringRules
    alerts: AlertRules
    deployment: DeploymentRules
    rollout: RolloutRules
    execution: ExecutionRules

    _values: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def load(cls, override_file: Path | None = None) -> Settings:
        """The packaged settings with the keys of `override_file` (a home's platform.toml) when it exists.
        SettingsError (one line) for an unreadable file, an unknown key or a bad value."""
        if override_file is None or not override_file.exists():
            return cls.packaged()
        try:
            overrides = tomllib.loads(override_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {override_file}: {exc}") from exc
        return cls.packaged().with_overrides(overrides, source=str(override_file))

    @classmethod
    def packaged(cls) -> Settings:
        """The packaged defaults alone (config/platform.toml)."""
        return cls._validated(tomllib.loads(packaged_config_text("platform.toml")), "config/platform.toml")

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> Settings:
        """These settings with the keys of `overrides` (the shape of a platform.toml) replaced, refused and
        validated as a home's file is; `source` names them in an error."""
        return self._validated(_merge(self._values, overrides, ""), source)

    @classmethod
    def _validated(cls, values: dict[str, Any], source: str) -> Settings:
        try:
            settings = cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(f"{describe_errors(exc, [], cls)} (in {source})") from None
        settings._values = values
        return settings


def _merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in overrides.items():
        if f"{where}{key}" in MOVED_TO_CONTRACT:
            raise SettingsError(
                f"setting '{where}{key}' describes the data, which the dataset contract does now: "
                f"{MOVED_TO_CONTRACT[f'{where}{key}']}"
            )
        if key not in defaults and where not in OPEN_TABLES:
            table = where.rstrip(".")
            raise SettingsError(
                f"[{table}] {key}: unknown setting (see config/platform.toml for the keys)"
                if table
                else f"[{key}]: unknown settings section (see config/platform.toml for the sections)"
            )
        if isinstance(defaults.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged


# ---- one line per error ---------------------------------------------------------------------------

_SAID = {
    "missing": "missing (every key needs a value)",
    "extra_forbidden": "unknown setting (see config/platform.toml for the keys)",
    "float_type": "must be a number",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "finite_number": "must be a finite number",
    "model_type": "must be a table",
    "dict_type": "must be a table",
    "string_too_short": "must not be empty",
}


def _said(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "enum":
        return f"must be one of {ctx['expected']}"
    if kind in ("greater_than", "greater_than_equal"):
        bound = ctx.get("gt", ctx.get("ge"))
        if bound == 0:
            return "must be positive" if kind == "greater_than" else "must not be negative"
        return f"must be {'greater than' if kind == 'greater_than' else 'at least'} {bound:g}"
    if kind in ("less_than", "less_than_equal"):
        bound = ctx.get("lt", ctx.get("le"))
        return f"must be {'less than' if kind == 'less_than' else 'at most'} {bound:g}"
    return _SAID.get(kind, error["msg"])


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    return str(value)


def _where(loc: Sequence[str | int], model: type[BaseModel]) -> tuple[list[str], str | None]:
    """Split an error location into the table path and the key in it (None: the table itself)."""
    tables: list[str] = []
    current: Any = model
    for index, part in enumerate(loc):
        fields = getattr(current, "model_fields", {}) if isinstance(current, type) else {}
        is_root = isinstance(current, type) and issubclass(current, RootModel)
        annotation = fields[part].annotation if isinstance(part, str) and part in fields else None
        if not is_root and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            tables.append(part)
            current = annotation
            continue
        key = str(part) + "".join(f"[{sub}]" for sub in loc[index + 1 :])
        return tables, key
    return tables, None


def describe_errors(exc: ValidationError, prefix: Sequence[str], model: type[BaseModel]) -> str:
    """Every error of a validation as one line: `[section] key: what it must be, got what it is`."""
    lines = []
    for error in exc.errors():
        tables, key = _where(error["loc"], model)
        table = ".".join([*prefix, *tables]) or "settings"
        said = _said(error)
        named = f"[{table}] {said}" if key is None else f"[{table}] {key}: {said}"
        # A key's own value is shown; a table's only when it is not a table (its checks name the keys).
        shown = error["type"] != "missing" and (key is not None or error["type"] != "value_error")
        lines.append(f"{named}, got {_shown(error['input'])}" if shown else named)
    return "; ".join(lines)
