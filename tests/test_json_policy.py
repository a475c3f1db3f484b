"""The one JSON policy: lossless or refused with the key path; records about bad data never fail."""

from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import orjson
import pandas as pd
import pytest

from results_store.json_policy import UnencodableValue, dumps, find_unencodable, tagged_default


def test_values_with_one_exact_json_form_are_encoded():
    value = {"ts": pd.Timestamp("2024-01-01T00:00:00.123456", tz="UTC"), "d": date(2024, 1, 2),
             "dt": datetime(2024, 1, 1, tzinfo=UTC), "n": np.float64(1.25), "i": np.int64(7), "half": Decimal("0.5")}
    assert orjson.loads(dumps(value)) == {"ts": "2024-01-01T00:00:00.123456+00:00", "d": "2024-01-02",
                                          "dt": "2024-01-01T00:00:00+00:00", "n": 1.25, "i": 7, "half": 0.5}


@pytest.mark.parametrize(("value", "path", "type_name"), [
    ({"a": [1, {"b": Decimal("0.1")}]}, "a[1].b", "Decimal"),  # 0.1 has no exact float
    ({"x": object()}, "x", "object"),
    ({"when": pd.NaT}, "when", "NaTType"),
    ({"s": {1, 2}}, "s", "set"),
])
def test_anything_else_is_refused_naming_its_key_path_and_type(value, path, type_name):
    with pytest.raises(UnencodableValue) as caught:
        dumps(value)
    assert (caught.value.path, caught.value.type_name) == (path, type_name)
    assert find_unencodable(value) == (path, type_name)
    assert isinstance(caught.value, TypeError)  # callers that quarantine on TypeError keep working


def test_records_about_bad_data_tag_the_value_instead_of_failing():
    encoded = orjson.loads(orjson.dumps({"x": Decimal("0.1")}, default=tagged_default))
    assert encoded == {"x": {"__unencodable__": "Decimal", "repr": "Decimal('0.1')"}}
