"""Strategy-mode configuration: the YAML files under ``schemas/mode_files/`` and their pydantic models.

A mode file is the single source of truth for which result types a mode stores, which assets,
venues and tokens its rows may name, its storage settings, and the parameters the reference
engine simulates it with.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from schemas.errors import ComponentError
from schemas.redaction import looks_secret_key, redact, redact_text
from schemas.result_types import ALWAYS_STORED, ResultType

__all__ = [
    "MODE_NAMES",
    "AuditConfig",
    "AuditTolerances",
    "DriftConfig",
    "ModeConfig",
    "ModeName",
    "ResultsStoreConfig",
    "StorageConfig",
    "StrategyConfig",
    "config_hash",
    "load_all_modes",
    "load_mode",
    "mode_path",
    "modes_dir",
]

# A Literal rather than str, so Prefect's Run form offers a drop-down of exactly these; the tuple
# of names is derived from it.
ModeName = Literal[
    "pure_lending",
    "btc_basis",
    "eth_basis",
    "eth_staking_only",
    "eth_leveraged",
    "usdt_market_neutral_no_leverage",
    "usdt_market_neutral",
]
MODE_NAMES: tuple[str, ...] = get_args(ModeName)

ExecutionMode = Literal["backtest", "live"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
Compression = Literal["zstd", "snappy", "gzip", "lz4", "uncompressed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    """Where and how a mode's tables are written. Environment and CLI values override these."""

    storage_path: str = Field("", description="sub-directory of the data dir; empty means the data dir itself")
    queue_size: int = Field(10_000, gt=0, description="capacity of the in-flow FIFO queue, in timesteps")
    batch_size: int = Field(100, gt=0, description="live: most timesteps per commit")
    retention_days: int = Field(365, gt=0, description="age after which run partitions may be removed")
    compression: Compression = Field("zstd", description="Parquet codec of the data files")


class AuditTolerances(_Strict):
    """How far stored figures may disagree before the audit reports a failure.

    Money tolerances are fractions of the mode's initial capital, so one default fits the USDT and
    the ETH share class (1e-8 of capital is 0.01 USD on a 1M USDT book, 5e-6 ETH on 500 ETH). The
    engine's own figures agree to ~1e-10 of capital; the defaults leave two orders of magnitude for
    another engine's rounding and still catch a component off by 0.0001%.
    """

    pnl_step: float = Field(1e-8, ge=0, description="per timestep: |change of the attribution sum - change of the "
                            "balance-based PnL|, as a fraction of initial capital")
    pnl_cumulative: float = Field(1e-6, ge=0, description="|sum of attribution - balance-based PnL|, as a fraction of "
                                  "initial capital (the reference engine's own reconciliation tolerance)")
    funding: float = Field(1e-8, ge=0, description="funding_tracking against the funding_pnl attribution and the "
                           "funding events, as a fraction of initial capital")
    delta_units: float = Field(1e-6, ge=0, description="net delta against the balance sheet, in units of the asset")
    delta_usd: float = Field(1e-8, ge=0, description="exposure_usd against net delta x price, as a fraction of "
                             "initial capital")
    price: float = Field(1e-6, ge=0, description="relative: the price implied by the exposures against the prices "
                         "of the execution log's trades and funding payments at the same timestep")
    position: float = Field(1e-9, ge=0, description="a trade's resulting position_size against the balance sheet's "
                            "perp amount, in units of the asset")


class DriftConfig(_Strict):
    """Backtest against live: when the distributions of a key metric differ enough to flag."""

    ks_threshold: float = Field(0.5, gt=0, le=1, description="two-sample Kolmogorov-Smirnov statistic above which "
                                "a metric is flagged (0: same distribution, 1: disjoint)")
    min_samples: int = Field(30, gt=0, description="fewer values than this on either side: not compared")
    max_samples: int = Field(20_000, gt=0, description="values kept per run and metric (evenly spaced in time)")


class AuditConfig(_Strict):
    """``component_config.results_store.audit``: the audit's tolerances and rules for this mode.

    Every field has a default, so a mode file without the section is valid. Not part of the run's
    identity (``config_hash``): changing a tolerance changes how runs are judged, not what they are.
    """

    tolerances: AuditTolerances = Field(default_factory=AuditTolerances)
    ltv_alert_threshold: Literal["max_ltv", "liquidation_threshold"] = Field(
        "max_ltv", description="the LTV at or above which a risk alert must exist")
    trade_event_types: list[str] = Field(default_factory=lambda: ["TRADE_EXECUTED"],
                                         description="execution_log event types that must move a balance")
    check_timestamp_spacing: bool = Field(True, description="timestamps must be exactly one frequency apart "
                                          "(off for a live feed that stamps snapshots with jitter)")
    quarantine_fails: bool = Field(False, description="quarantined rows fail the audit instead of a warning")
    drift: DriftConfig = Field(default_factory=DriftConfig)


class ResultsStoreConfig(_Strict):
    """``component_config.results_store`` of a mode file."""

    result_types: list[ResultType] = Field(description="result tables this mode stores")
    balance_sheet_assets: list[str] = Field(min_length=1)
    pnl_attribution_types: list[str] = Field(min_length=1)
    delta_tracking_assets: list[str] = Field(default_factory=list)
    leverage_tracking: bool = False
    funding_tracking_venues: list[str] = Field(default_factory=list)
    dust_tracking_tokens: list[str] = Field(default_factory=list)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ResultsStoreConfig:
        types = set(self.result_types)
        if len(types) != len(self.result_types):
            raise ValueError("result_types lists a type twice")
        missing = [t.value for t in ALWAYS_STORED if t not in types]
        if missing:
            raise ValueError(f"result_types must include the always-stored types; missing {missing}")
        has_lev = ResultType.LEVERAGE_TRACKING in types
        if self.leverage_tracking and not has_lev:
            raise ValueError("leverage_tracking is true but 'leverage_tracking' is not among result_types")
        if has_lev and not self.leverage_tracking:
            raise ValueError("'leverage_tracking' is among result_types but leverage_tracking is false")
        needs = {
            ResultType.DELTA_TRACKING: ("delta_tracking_assets", self.delta_tracking_assets),
            ResultType.FUNDING_TRACKING: ("funding_tracking_venues", self.funding_tracking_venues),
            ResultType.DUST_TRACKING: ("dust_tracking_tokens", self.dust_tracking_tokens),
        }
        for rtype, (field, values) in needs.items():
            if rtype in types and not values:
                raise ValueError(f"'{rtype.value}' is among result_types but {field} is empty")
        return self

    def enabled(self, result_type: ResultType | str) -> bool:
        return ResultType(result_type) in self.result_types


class LendingConfig(_Strict):
    supply_asset: str
    borrow_asset: str | None = None
    target_ltv: float = Field(0.0, ge=0, le=1)
    max_ltv: float = Field(0.0, ge=0, le=1)
    liquidation_threshold: float = Field(0.0, ge=0, le=1)


class StrategyConfig(_Strict):
    """What the reference engine simulates for this mode."""

    share_class: Literal["USDT", "ETH", "BTC"]
    initial_capital: float = Field(gt=0, description="in share-class units")
    spot_asset: Literal["ETH", "BTC"] | None = None
    staking_token: str | None = None
    lending: LendingConfig | None = None
    hedge_venues: list[str] = Field(default_factory=list)
    cex_venues: list[str] = Field(default_factory=list)


class ModeConfig(_Strict):
    """One strategy mode's whole configuration file."""

    mode: str
    description: str
    execution_mode: ExecutionMode = "backtest"
    log_level: LogLevel = "INFO"
    strategy: StrategyConfig
    component_config: dict[Literal["results_store"], ResultsStoreConfig]

    @property
    def results_store(self) -> ResultsStoreConfig:
        return self.component_config["results_store"]

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with anything secret-looking masked, for the runs registry."""
        redacted: dict[str, Any] = redact(self.model_dump(mode="json"))
        return redacted


def config_hash(config: ModeConfig) -> str:
    """A stable sha256 of the config's content, independent of key order.

    The audit section is left out: it says how stored runs are judged, not what a run stores, so
    tightening a tolerance must neither make a resumed run "another config" (RST-301) nor change
    the hash of the runs recorded before the section existed.
    """
    content = config.model_dump(mode="json")
    for section in content["component_config"].values():
        section.pop("audit", None)
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def modes_dir() -> Path:
    """The directory that holds the seven mode files: ``schemas/mode_files/``, shipped as package data.

    Read through :mod:`importlib.resources`, so a wheel install finds them as an editable one does.
    Packages install unzipped here, so the resource is a real directory and ``Path`` is safe.
    """
    return Path(str(resources.files("schemas").joinpath("mode_files")))


def mode_path(mode: str, directory: Path | None = None) -> Path:
    return (directory or modes_dir()) / f"{mode}.yaml"


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The model (or type) that the value at ``loc`` of a mode file is validated against."""
    def unwrap(annotation: Any) -> Any:  # Optional[Model] -> Model
        if get_origin(annotation) in (Union, UnionType):
            args = get_args(annotation)
            return next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), args[0])
        return annotation

    current: Any = ModeConfig
    for part in loc:
        current = unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]  # the part is a key or an index
        else:
            return None
    return unwrap(current)


def _describe(error: ErrorDetails) -> str:
    loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
    msg = error["msg"]
    value = error.get("input")
    if error["type"] == "enum":
        allowed = error.get("ctx", {}).get("expected", "")
        msg = f"not a known value; allowed: {allowed}"
    elif error["type"] == "literal_error":
        msg = f"not allowed; expected {error.get('ctx', {}).get('expected', '')}"
    elif error["type"] == "extra_forbidden":
        parent = _model_at(tuple(error["loc"][:-1]))
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            msg = f"unknown key; allowed keys: {', '.join(parent.model_fields)}"
        # An unknown key is often a credential pasted into the wrong file: never echo its value.
        return f"field '{loc}': {msg}"
    elif error["type"] == "value_error":
        # A cross-field rule: its message names the fields; the whole section as "input" is noise.
        msg = msg.removeprefix("Value error, ")
        return f"field '{loc}': {msg}"
    if any(looks_secret_key(str(part)) for part in error["loc"]):
        return f"field '{loc}': {msg} (value hidden: the key names a secret)"
    return f"field '{loc}': {msg} (got {redact_text(repr(value))})"


def load_mode_file(path: Path, *, user_file: bool = False) -> ModeConfig:
    """Load and validate one mode file; any problem raises RST-201 naming file, field and value.

    A mode file looked up by name (``load_mode``) must be named after its ``mode``. A ``user_file``
    (``--config PATH``: users keep their configurations anywhere, under any name) may have any name;
    its ``mode`` must be one of :data:`MODE_NAMES` instead, since the mode says what the reference
    engine simulates and which mode the run is recorded under.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ComponentError("RST-201", f"{path}: no such mode file", original_exception=exc) from exc
    except yaml.YAMLError as exc:
        raise ComponentError("RST-201", f"{path}: not valid YAML: {exc}", original_exception=exc) from exc
    if not isinstance(raw, dict):
        raise ComponentError("RST-201", f"{path}: expected a mapping at the top level")
    try:
        config = ModeConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        # No original_exception: pydantic's error repr carries every input value, secrets included,
        # and Prefect stores a failed task's exception in its database.
        raise ComponentError(
            "RST-201", f"{path}: {problems}",
            details={"file": str(path), "errors": [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
            ]},
        ) from None
    if user_file:
        if config.mode not in MODE_NAMES:
            raise ComponentError(
                "RST-201", f"{path}: field 'mode' is {config.mode!r}, not a strategy mode; allowed: {', '.join(MODE_NAMES)}"
            )
    elif config.mode != path.stem:
        raise ComponentError(
            "RST-201", f"{path}: field 'mode' is {config.mode!r} but the file is named {path.stem!r}"
        )
    return config


def load_mode(mode: str, directory: Path | None = None) -> ModeConfig:
    """Load a mode by name, e.g. ``load_mode("btc_basis")``."""
    directory = directory or modes_dir()
    if directory == modes_dir() and mode not in MODE_NAMES:
        raise ComponentError(
            "RST-201", f"unknown mode {mode!r}; allowed: {', '.join(MODE_NAMES)}"
        )
    return load_mode_file(mode_path(mode, directory))


def load_all_modes(directory: Path | None = None) -> dict[str, ModeConfig]:
    return {name: load_mode(name, directory) for name in MODE_NAMES}
