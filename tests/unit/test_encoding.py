import math

import pytest

from django_jobs.codec import encode_json


def test_plain_data_round_trips():
    assert encode_json({"a": [1, 2.5, None, True, "é"]}, "x") == '{"a":[1,2.5,null,true,"é"]}'


def test_a_literal_backslash_u0000_is_not_mistaken_for_nul():
    assert encode_json("\\u0000", "x") == '"\\\\u0000"'
    with pytest.raises(TypeError, match="NUL"):
        encode_json("\\\x00", "x")


def test_tuples_become_lists_as_django_normalises_them():
    assert encode_json((1, 2), "x") == "[1,2]"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (object(), "Unsupported type"),
        (math.nan, "Out of range float values are not JSON compliant"),
        ({"k": {1, 2}}, "Unsupported type"),
        ("a\x00b", "NUL character"),
        ("a\ud800b", "not valid Unicode"),
    ],
)
def test_unstorable_values_are_refused_with_the_name(value, fragment):
    with pytest.raises(TypeError, match="the thing") as info:
        encode_json(value, "the thing")
    assert fragment in str(info.value)
