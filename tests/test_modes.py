"""The seven mode files: what each stores, and how a bad file is reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.errors import ComponentError
from schemas.modes import MODE_NAMES, load_all_modes, load_mode, load_mode_file, mode_path

# The component specification's "Result Types by Strategy Mode" table, written out literally.
SPEC_TABLE: dict[str, set[str]] = {
    "pure_lending": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log"},
    "btc_basis": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                  "delta_tracking", "funding_tracking"},
    "eth_basis": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                  "delta_tracking", "funding_tracking"},
    "eth_staking_only": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                         "dust_tracking"},
    "eth_leveraged": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                      "leverage_tracking", "dust_tracking"},
    "usdt_market_neutral_no_leverage": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                                        "delta_tracking", "funding_tracking", "dust_tracking"},
    "usdt_market_neutral": {"balance_sheet", "pnl_attribution", "risk_metrics", "execution_log",
                            "delta_tracking", "leverage_tracking", "funding_tracking", "dust_tracking"},
}

Raw = dict[str, Any]


def test_there_are_exactly_the_seven_spec_modes():
    assert set(MODE_NAMES) == set(SPEC_TABLE)
    assert {p.stem for p in mode_path("pure_lending").parent.glob("*.yaml")} == set(SPEC_TABLE)


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_each_mode_loads_and_stores_exactly_the_spec_result_types(name):
    config = load_mode(name)
    assert config.mode == name
    stored = [t.value for t in config.results_store.result_types]
    assert len(stored) == len(set(stored))
    assert set(stored) == SPEC_TABLE[name]
    assert config.results_store.leverage_tracking == ("leverage_tracking" in SPEC_TABLE[name])


def test_load_all_modes_returns_every_mode():
    assert set(load_all_modes()) == set(SPEC_TABLE)


def _rs(raw: Raw) -> Raw:
    return raw["component_config"]["results_store"]


def _write_broken(tmp_path: Path, edit: Callable[[Raw], object], name: str = "usdt_market_neutral") -> Path:
    """A copy of a real mode file with one thing broken, under the real file name."""
    raw = yaml.safe_load(mode_path("usdt_market_neutral").read_text())
    edit(raw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _message(path: Path) -> str:
    """Load ``path`` expecting exactly one RST-201 error; return its text."""
    with pytest.raises(ComponentError) as caught:
        load_mode_file(path)
    error = caught.value
    assert error.error_code == "RST-201"
    message = str(error)
    assert str(path) in message  # names the file
    assert "\n" not in message  # one readable line
    return message


def _remove_leverage_type(raw: Raw) -> None:
    _rs(raw)["result_types"].remove("leverage_tracking")


# (case, edit, field path, bad value as shown, what is allowed). An unknown key's value is never shown:
# it is often a credential pasted into the wrong file (tests/test_secrets.py).
BAD_CONFIGS: list[tuple[str, Callable[[Raw], object], str, str, list[str]]] = [
    ("unknown result type", lambda r: _rs(r)["result_types"].append("greeks"),
     "component_config.results_store.result_types.8", "'greeks'",
     ["allowed", "'balance_sheet'", "'dust_tracking'", "'leverage_tracking'"]),
    ("leverage flag without the type", _remove_leverage_type,
     "component_config.results_store", "leverage_tracking is true",
     ["'leverage_tracking' is not among result_types"]),
    ("unknown compression", lambda r: _rs(r)["storage"].update(compression="brotli"),
     "component_config.results_store.storage.compression", "'brotli'",
     ["'zstd'", "'snappy'", "'gzip'", "'lz4'", "'uncompressed'"]),
    ("negative queue size", lambda r: _rs(r)["storage"].update(queue_size=-5),
     "component_config.results_store.storage.queue_size", "-5", ["greater than 0"]),
    ("wrong type (text for a number)", lambda r: _rs(r)["storage"].update(batch_size="lots"),
     "component_config.results_store.storage.batch_size", "'lots'", ["valid integer"]),
    ("wrong type (text for a flag)", lambda r: _rs(r).update(leverage_tracking="sometimes"),
     "component_config.results_store.leverage_tracking", "'sometimes'", ["valid boolean"]),
    ("unknown top-level key", lambda r: r.update(colour="blue"),
     "colour", "", ["unknown key", "mode", "description", "strategy", "component_config"]),
    ("unknown storage key", lambda r: _rs(r)["storage"].update(queue_sise=5),
     "component_config.results_store.storage.queue_sise", "", ["unknown key", "queue_size", "batch_size"]),
    ("unknown execution mode", lambda r: r.update(execution_mode="paper"),
     "execution_mode", "'paper'", ["'backtest'", "'live'"]),
    ("empty list for an enabled type", lambda r: _rs(r).update(dust_tracking_tokens=[]),
     "component_config.results_store", "dust_tracking_tokens is empty", ["'dust_tracking' is among result_types"]),
]


@pytest.mark.parametrize(("edit", "field", "value", "allowed"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_gives_one_error_naming_file_field_value_and_what_is_allowed(tmp_path, edit, field, value, allowed):
    message = _message(_write_broken(tmp_path, edit))
    assert f"field '{field}'" in message, message
    assert value in message, message
    for text in allowed:
        assert text in message, (text, message)


def test_a_file_whose_mode_does_not_match_its_name_is_refused(tmp_path):
    path = _write_broken(tmp_path, lambda r: None, name="btc_basis")
    message = _message(path)
    assert "field 'mode' is 'usdt_market_neutral' but the file is named 'btc_basis'" in message


def test_an_unknown_mode_name_lists_the_modes():
    with pytest.raises(ComponentError) as caught:
        load_mode("usdt_market_neutral_v2")
    assert caught.value.error_code == "RST-201"
    assert "'usdt_market_neutral_v2'" in str(caught.value)
    assert all(name in str(caught.value) for name in SPEC_TABLE)


def test_a_missing_file_and_broken_yaml_are_rst_201(tmp_path):
    with pytest.raises(ComponentError, match="no such mode file"):
        load_mode_file(tmp_path / "pure_lending.yaml")
    broken = tmp_path / "pure_lending.yaml"
    broken.write_text("mode: [unclosed\n")
    with pytest.raises(ComponentError, match="not valid YAML"):
        load_mode_file(broken)
