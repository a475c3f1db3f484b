"""Files of snapshots: every bad line is reported at once, with its line, code and raw text; no good line is lost."""

from __future__ import annotations

import orjson
import pytest

from results_store.simulator.jsonl import BadLine, check_jsonl, read_jsonl, write_jsonl
from results_store.simulator.reference import ReferenceEngine
from schemas.errors import ComponentError
from schemas.modes import load_mode

# (kind, the bad line as written, code, words the reason must contain). Timesteps 3.. are good lines around them.
BAD_LINES = [
    ("NaN literal", '{"timestamp": "2024-01-01T00:00:30+00:00", "x": NaN}', "RST-101", "not valid JSON"),
    ("Infinity literal", '{"timestamp": "2024-01-01T00:00:30+00:00", "x": Infinity}', "RST-101", "not valid JSON"),
    ("1e400", '{"timestamp": "2024-01-01T00:00:30+00:00", "x": 1e400}', "RST-101", "infinity"),
    ("garbage", "this is not json at all", "RST-101", "not valid JSON"),
    ("BOM", '\ufeff{"timestamp": "2024-01-01T00:00:30+00:00"}', "RST-101", "BOM"),
    ("nesting too deep", "[" * 2000 + "]" * 2000, "RST-101", "depth limit"),
    ("scalar line", "42", "RST-101", "expected a JSON object"),
    ("no timestamp", '{"timestep": 99}', "RST-101", "no 'timestamp'"),
    ("timestamp in 2262+", '{"timestamp": "2300-01-01T00:00:00+00:00"}', "RST-101", "outside what the tables hold"),
    ("timestep 2^63", '{"timestamp": "2024-01-01T00:00:30+00:00", "timestep": 9223372036854775808}', "RST-101",
     "from 0 to 2^63-1"),
    ("negative timestep", '{"timestamp": "2024-01-01T00:00:30+00:00", "timestep": -1}', "RST-101", "from 0 to 2^63-1"),
    ("duplicate timestep", "DUPLICATE", "RST-103", "timesteps must increase"),
    ("+05:00 timestamp, earlier in UTC", "OFFSET", "RST-103", "before the previous line"),
]


def _file_with_one_line_of_each_kind(tmp_path):
    good = tmp_path / "good.jsonl"
    engine = ReferenceEngine(load_mode("pure_lending"), "2024-01-01", "2024-01-01 00:30", "1min")
    write_jsonl(engine, good)
    lines = good.read_text().splitlines()
    out, expected_bad = [], {}
    for index, line in enumerate(lines):
        out.append(line)
        if index < len(BAD_LINES):
            kind, text, code, words = BAD_LINES[index]
            step = orjson.loads(line)["timestep"]
            if text == "DUPLICATE":
                text = line
            elif text == "OFFSET":  # 05:00+05:00 is 00:00 UTC: before this line's time
                text = line.replace(orjson.loads(line)["timestamp"], "2024-01-01T05:00:00+05:00").replace(
                    f'"timestep":{step}', f'"timestep":{step}0000')
            out.append(text)
            expected_bad[len(out)] = (kind, code, words, text)
    out.append('{"timestamp": "2024-01-01T00:40:00+00:00", "timestep": 10')  # truncated last line, no newline
    expected_bad[len(out)] = ("truncated last line", "RST-101", "unexpected end of data", out[-1])
    path = tmp_path / "mixed.jsonl"
    path.write_bytes("\n".join(out).encode())
    return path, len(lines), expected_bad


def test_a_file_check_reports_every_bad_line_at_once_with_code_line_and_reason(tmp_path):
    path, good_lines, expected = _file_with_one_line_of_each_kind(tmp_path)
    check = check_jsonl(path)
    found = {b.line: b for b in check.bad}
    assert sorted(found) == sorted(expected), check.report()
    for line, (kind, code, words, _text) in expected.items():
        error = found[line].error
        assert error.error_code == code, (kind, error)
        assert f"{path}:{line}:" in str(error) and words in str(error), (kind, str(error))
    assert check.snapshots == good_lines
    assert check.lines == good_lines + len(expected)  # good + bad = lines read
    assert len(check.report().splitlines()) == len(expected)


def test_reading_hands_over_each_unparseable_line_with_its_raw_text_and_keeps_every_good_one(tmp_path):
    path, good_lines, expected = _file_with_one_line_of_each_kind(tmp_path)
    bad: list[BadLine] = []
    snapshots = list(read_jsonl(path, on_bad_line=bad.append))
    # Order is the store's check when reading: the duplicate and the earlier timestamp come through.
    unparseable = {line: e for line, e in expected.items() if e[1] == "RST-101"}
    assert [b.line for b in bad] == sorted(unparseable)
    assert all(b.text == unparseable[b.line][3] for b in bad)  # the raw text, for the quarantine row
    assert len(snapshots) == good_lines + len(expected) - len(unparseable)


def test_strict_reading_stops_at_the_first_bad_line(tmp_path):
    path, _, expected = _file_with_one_line_of_each_kind(tmp_path)
    with pytest.raises(ComponentError) as caught:
        list(read_jsonl(path))
    assert f"{path}:{min(expected)}:" in str(caught.value)


def test_the_inbox_refuses_a_file_with_bad_lines_whole_naming_every_one_of_them(tmp_path):
    from results_store.inbox import count_snapshots

    path, good_lines, expected = _file_with_one_line_of_each_kind(tmp_path)
    with pytest.raises(ComponentError) as caught:
        count_snapshots(path)
    message = str(caught.value)
    assert f"{len(expected)} of {good_lines + len(expected)} lines are bad, nothing was written" in message
    assert all(f"{path}:{line}:" in message for line in expected)
    assert caught.value.details["bad_lines"] == sorted(expected)
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("\n".join(line for n, line in enumerate(path.read_text().splitlines(), 1) if n not in expected))
    assert count_snapshots(fixed) == good_lines
