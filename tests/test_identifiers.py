"""Run ids are refused with RST-201 when they could not be a directory, a partition value or a clean listing."""

import pytest

from schemas.errors import ComponentError
from schemas.identifiers import validate_run_id


@pytest.mark.parametrize("run_id", ["B", "usdt_market_neutral-20240101T000000-ab12cd", "live-eth_basis-20241130",
                                    "a" * 128, "v1.2_run-3"])
def test_ordinary_run_ids_are_accepted(run_id):
    assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize(("run_id", "reason"), [
    ("", "empty"),
    ("a" * 250, "250 characters"),
    ("a" * 300, "300 characters"),
    ("bad\x00id", "'\\x00'"),
    ("two\nlines", "'\\n'"),
    ("../../etc", "'/'"),
    ("..", "first character"),
    ("has space", "' '"),
    ("quote'd", '"\'"'),
    ("-starts-with-dash", "first character"),
    ("ünïcode", "'ï'"),
])
def test_unsafe_run_ids_are_refused_with_what_is_wrong(run_id, reason):
    with pytest.raises(ComponentError) as caught:
        validate_run_id(run_id)
    assert caught.value.error_code == "RST-201"
    assert reason in str(caught.value), str(caught.value)
    assert "\x00" not in str(caught.value) and "\n" not in str(caught.value)
