"""Settings precedence: CLI flag > environment > mode file > default, one layer at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.modes import ModeConfig, load_mode, load_mode_file, mode_path
from schemas.settings import load_settings

ENV = {
    "queue_size": "RESULTS_STORE_QUEUE_SIZE",
    "batch_size": "RESULTS_STORE_BATCH_SIZE",
    "timeout": "RESULTS_STORE_TIMEOUT",
    "data_dir": "BASIS_DATA_DIR",
}
DEFAULTS: dict[str, Any] = {"queue_size": 10_000, "batch_size": 100, "timeout": 30.0, "data_dir": Path("data")}
# Non-default values for the layers that can carry the setting (the mode file holds storage values only).
IN_FILE: dict[str, Any] = {"queue_size": 777, "batch_size": 55}
IN_ENV: dict[str, str] = {"queue_size": "4242", "batch_size": "66", "timeout": "7.5", "data_dir": "/srv/env-data"}
FROM_ENV: dict[str, Any] = {"queue_size": 4242, "batch_size": 66, "timeout": 7.5, "data_dir": Path("/srv/env-data")}
ON_CLI: dict[str, Any] = {"queue_size": 12, "batch_size": 3, "timeout": 1.25, "data_dir": Path("/srv/cli-data")}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def mode(tmp_path: Path) -> ModeConfig:
    """btc_basis with non-default storage values in its file."""
    raw = yaml.safe_load(mode_path("btc_basis").read_text())
    raw["component_config"]["results_store"]["storage"].update(IN_FILE)
    path = tmp_path / "btc_basis.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_mode_file(path)


def _picked(**kwargs: Any) -> dict[str, Any]:
    settings = load_settings(kwargs.pop("mode", None), **kwargs)
    return {name: getattr(settings, name) for name in DEFAULTS}


def test_defaults_apply_when_nothing_else_says():
    assert _picked() == DEFAULTS


def test_the_real_mode_files_keep_the_defaults():
    assert _picked(mode=load_mode("btc_basis")) == DEFAULTS


def test_the_mode_file_beats_the_default(mode):
    assert _picked(mode=mode) == {**DEFAULTS, **IN_FILE}


@pytest.mark.parametrize("name", sorted(ENV))
def test_the_environment_beats_the_mode_file_and_the_default(mode, monkeypatch, name):
    monkeypatch.setenv(ENV[name], IN_ENV[name])
    picked = _picked(mode=mode)
    assert picked[name] == FROM_ENV[name]
    # Everything the environment does not set still comes from the file or the default.
    assert {k: v for k, v in picked.items() if k != name} == {k: v for k, v in {**DEFAULTS, **IN_FILE}.items()
                                                               if k != name}


@pytest.mark.parametrize("name", sorted(ENV))
def test_a_cli_flag_beats_the_environment_the_mode_file_and_the_default(mode, monkeypatch, name):
    for key, var in ENV.items():
        monkeypatch.setenv(var, IN_ENV[key])
    picked = _picked(mode=mode, **{name: ON_CLI[name]})
    assert picked[name] == ON_CLI[name]
    assert {k: v for k, v in picked.items() if k != name} == {k: v for k, v in FROM_ENV.items() if k != name}


def test_a_flag_given_as_none_means_not_given(mode, monkeypatch):
    monkeypatch.setenv("RESULTS_STORE_QUEUE_SIZE", "4242")
    picked = _picked(mode=mode, queue_size=None, batch_size=None, timeout=None, data_dir=None)
    assert picked == {**DEFAULTS, **IN_FILE, "queue_size": 4242}


def test_the_data_dir_from_the_environment_is_where_tables_go(mode, monkeypatch, tmp_path):
    monkeypatch.setenv("BASIS_DATA_DIR", str(tmp_path / "store"))
    settings = load_settings(mode)
    assert settings.root == tmp_path / "store"
