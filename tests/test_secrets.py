"""Secrets are never echoed or stored: not in error messages, not in the runs registry."""

from __future__ import annotations

import pickle

import orjson
import pytest
import yaml

from results_store import delta_tables
from results_store.drive import run_snapshots
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode, load_mode_file, mode_path
from schemas.redaction import MASK, redact

SECRET = "sk-live-123abc"


def _mode_file(tmp_path, mutate):
    raw = yaml.safe_load(mode_path("pure_lending").read_text())
    mutate(raw)
    path = tmp_path / "pure_lending.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda raw: raw.update(api_key=SECRET), id="unknown top-level key"),
    pytest.param(lambda raw: raw["strategy"].update(exchange_password=SECRET), id="unknown nested key"),
    pytest.param(lambda raw: raw["strategy"].update(initial_capital=SECRET), id="secret-shaped bad value"),
])
def test_a_rejected_mode_file_never_echoes_the_value(tmp_path, mutate):
    with pytest.raises(ComponentError) as caught:
        load_mode_file(_mode_file(tmp_path, mutate))
    assert caught.value.error_code == "RST-201"
    # Neither the message, nor the repr Prefect logs, nor the pickle it stores in its database.
    for shown in (str(caught.value), repr(caught.value), pickle.dumps(caught.value)):
        assert SECRET not in (shown if isinstance(shown, str) else shown.decode("latin-1"))


@pytest.mark.parametrize(("data", "expected"), [
    ({"api_key": "abc"}, {"api_key": MASK}),
    ({"AWS_SECRET_ACCESS_KEY": "abc", "password": "pw"}, {"AWS_SECRET_ACCESS_KEY": MASK, "password": MASK}),
    ({"description": f"prod key {SECRET} do not share"}, {"description": f"prod key {MASK} do not share"}),
    ({"url": "postgresql://trader:hunter2@db/prod"}, {"url": f"postgresql{MASK}db/prod"}),
    ({"notes": ["AKIAIOSFODNN7EXAMPLE"]}, {"notes": [MASK]}),
    ({"token": "aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5zz"}, {"token": MASK}),  # random-looking: by its shape
    # Asset names are not secrets, even under keys that say "token".
    ({"staking_token": "weETH", "dust_tracking_tokens": ["EIGEN", "ETHFI"]},
     {"staking_token": "weETH", "dust_tracking_tokens": ["EIGEN", "ETHFI"]}),
])
def test_the_one_redaction_masks_secret_keys_and_secret_shaped_values(data, expected):
    assert redact(data) == expected


def test_the_shipped_mode_files_have_nothing_to_redact():
    for mode in ("pure_lending", "usdt_market_neutral", "eth_leveraged"):
        config = load_mode(mode)
        assert config.redacted() == config.model_dump(mode="json")


def test_a_secret_in_a_free_text_field_is_not_stored_in_the_runs_registry(tmp_path):
    config = load_mode_file(_mode_file(tmp_path, lambda raw: raw.update(description=f"uses {SECRET}")))
    engine = ReferenceEngine(config, "2024-01-01", "2024-01-01 00:10", "1min")
    run_snapshots(config, engine.iter_snapshots(), data_dir=tmp_path / "data", run_id="r1")
    runs = delta_tables.read(delta_tables.table_path(tmp_path / "data", "backtest", "runs"))
    stored = runs.column("config_json").to_pylist()
    assert stored and all(SECRET not in text for text in stored)
    assert MASK in orjson.loads(stored[0])["description"]
