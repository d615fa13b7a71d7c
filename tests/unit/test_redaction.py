"""Which argument keys the admin hides, and how deep it looks."""

import pytest

from django_jobs.redaction import REDACTED, redact, redact_pattern


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_passwd",
        "PWD",
        "client_secret",
        "access_token",
        "credentials",
        "Authorization",
        "auth",
        "session_cookie",
        "SENTRY_DSN",
        "private_key",
        "api_key",
        "ApiKey",
    ],
)
def test_the_default_pattern_hides_credential_like_keys(key):
    assert redact({key: "s3cret"}, redact_pattern()) == {key: REDACTED}


def test_ordinary_keys_are_shown():
    value = {
        "user_id": 1,
        "email": "a@b.c",
        "format": "pdf",
        "author": "ann",
        "author_id": 2,
        "cache_key": "k",
    }
    assert redact(value, redact_pattern()) == value


def test_nested_dicts_and_lists_are_redacted_at_any_depth():
    value = [1, {"config": {"servers": [{"host": "db", "password": "x"}]}}, ("t", {"token": 2})]
    assert redact(value, redact_pattern()) == [
        1,
        {"config": {"servers": [{"host": "db", "password": REDACTED}]}},
        ["t", {"token": REDACTED}],
    ]
