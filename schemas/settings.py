"""Runtime settings from the environment, layered over a mode file's storage settings.

Precedence, highest first: explicit values (CLI flags), environment variables, the mode file's
``component_config.results_store.storage`` block, then the defaults below.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from schemas.modes import Compression, ExecutionMode, LogLevel, ModeConfig, StorageConfig

__all__ = ["DEFAULT_DATA_DIR", "StoreSettings", "load_settings", "resolve_data_dir"]

DEFAULT_DATA_DIR = Path("data")

# The storage defaults live in one place, the mode file's model; the settings take theirs from it.
_STORAGE = StorageConfig.model_fields


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The one data-dir resolver: ``data_dir`` if given, else ``$BASIS_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("BASIS_DATA_DIR") or DEFAULT_DATA_DIR)


def _env(name: str, field: str) -> Any:
    # Accept the field name too, so CLI overrides and the mode file use plain names.
    return AliasChoices(field, name)


class StoreSettings(BaseSettings):
    """Everything the store needs at run time that is not part of a mode's data contract."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    execution_mode: ExecutionMode = Field(
        "backtest", validation_alias=_env("BASIS_EXECUTION_MODE", "execution_mode"),
        description="backtest: large batches, back-pressure; live: WAL, commit within a second",
    )
    log_level: LogLevel = Field(
        "INFO", validation_alias=_env("BASIS_LOG_LEVEL", "log_level"),
    )
    data_dir: Path = Field(
        DEFAULT_DATA_DIR, validation_alias=_env("BASIS_DATA_DIR", "data_dir"),
        description="root of every table, log and WAL",
    )
    queue_size: int = Field(
        _STORAGE["queue_size"].default, gt=0, validation_alias=_env("RESULTS_STORE_QUEUE_SIZE", "queue_size"),
        description="capacity of the FIFO queue, in timesteps",
    )
    batch_size: int = Field(
        _STORAGE["batch_size"].default, gt=0, validation_alias=_env("RESULTS_STORE_BATCH_SIZE", "batch_size"),
        description="live mode: most timesteps per commit",
    )
    timeout: float = Field(
        30.0, gt=0, validation_alias=_env("RESULTS_STORE_TIMEOUT", "timeout"),
        description="seconds a single table write may take before RST-003",
    )
    backtest_batch_size: int = Field(
        100_000, gt=0,
        validation_alias=_env("RESULTS_STORE_BACKTEST_BATCH_SIZE", "backtest_batch_size"),
        description="backtest mode: timesteps per commit, and per data file of each table (a batch is streamed "
                    "into its files chunk by chunk, so its size costs no memory; a crash loses at most one "
                    "batch of work, which the resumed run redoes)",
    )
    flush_interval: float = Field(
        1.0, gt=0, validation_alias=_env("RESULTS_STORE_FLUSH_INTERVAL", "flush_interval"),
        description="live mode: most seconds between an acknowledged snapshot and its commit",
    )
    retention_days: int = Field(
        _STORAGE["retention_days"].default, gt=0, validation_alias=_env("RESULTS_STORE_RETENTION_DAYS", "retention_days"),
    )
    compression: Compression = Field(
        _STORAGE["compression"].default, validation_alias=_env("RESULTS_STORE_COMPRESSION", "compression"),
    )
    storage_path: str = Field(
        _STORAGE["storage_path"].default, validation_alias=_env("RESULTS_STORE_STORAGE_PATH", "storage_path"),
    )
    strict: bool = Field(
        False, validation_alias=_env("RESULTS_STORE_STRICT", "strict"),
        description="fail the run on the first invalid row instead of quarantining it",
    )
    tune_allocators: bool = Field(
        True, validation_alias=_env("RESULTS_STORE_TUNE_ALLOCATORS", "tune_allocators"),
        description="put Arrow on the system allocator and cap malloc arenas at 2 (process-wide; "
                    "~220 MB less peak memory on a month-long backtest)",
    )

    @property
    def root(self) -> Path:
        """The directory tables are written under: data dir plus the mode's storage path."""
        return self.data_dir / self.storage_path if self.storage_path else self.data_dir

    @property
    def commit_batch_size(self) -> int:
        return self.backtest_batch_size if self.execution_mode == "backtest" else self.batch_size


class _ModeFileSource(PydanticBaseSettingsSource):
    """Values from a mode file, ranked below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


def load_settings(mode: ModeConfig | None = None, **overrides: Any) -> StoreSettings:
    """Build settings: ``overrides`` (CLI) > environment > ``mode`` file > defaults.

    ``None`` overrides are ignored, so a CLI can pass every option through unconditionally.
    """
    file_values: dict[str, Any] = {}
    if mode is not None:
        file_values = mode.results_store.storage.model_dump()
        file_values["execution_mode"] = mode.execution_mode
        file_values["log_level"] = mode.log_level
    explicit = {k: v for k, v in overrides.items() if v is not None}

    class _Layered(StoreSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _ModeFileSource(settings_cls, file_values))

    layered = _Layered(**explicit)
    return StoreSettings.model_construct(**layered.model_dump())
