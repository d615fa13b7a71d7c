"""Hiding secrets: the values of dictionary keys that look like credentials.

Used for a job's arguments and return value (the admin's job page, the HTTP API, the
arguments sent to Sentry), and for a schedule's arguments wherever the admin shows them
read-only (view-only staff, schedules declared in settings). Only what is shown
changes: the rows keep the real values, which the task needs. Values are matched by
their *key*, at any depth of nested dicts and lists; a secret passed as a positional
argument has no key and is shown. Error messages and
tracebacks are shown as recorded, never redacted.
"""

import re
from functools import lru_cache
from typing import Any

from django.conf import settings

#: Keys whose values are hidden, unless ``DJANGO_JOBS["ADMIN_REDACT"]`` says else. Matched
#: anywhere in the key, in any case: "auth" covers "Authorization" and "oauth_token" (not
#: "author"), "dsn" covers "SENTRY_DSN". A bare "key" is not enough: "cache_key" or
#: "sort_key" are everyday arguments; "api_key", "ApiKey", "private_key" and the like are.
DEFAULT_REDACT = (
    r"password|passwd|pwd|secret|token|credential|auth(?!ors?(?:$|[^a-z]))|cookie|dsn|private"
    r"|(?:api|access|secret|private|signing|encryption|license)[_-]?key"
)
REDACTED = "********"


@lru_cache(maxsize=8)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def redact_pattern() -> re.Pattern[str] | None:
    """``DJANGO_JOBS["ADMIN_REDACT"]``: a regex of keys whose values are hidden ("" for none)."""
    pattern = getattr(settings, "DJANGO_JOBS", {}).get("ADMIN_REDACT", DEFAULT_REDACT)
    return _compile(pattern) if pattern else None


def redact(value: Any, pattern: re.Pattern[str] | None) -> Any:
    """Return ``value`` with the values of matching dict keys replaced, at any depth."""
    if pattern is None:
        return value
    if isinstance(value, dict):
        return {
            k: REDACTED if pattern.search(str(k)) else redact(v, pattern) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, pattern) for v in value]
    return value
