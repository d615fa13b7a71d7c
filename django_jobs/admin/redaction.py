"""Showing JSON in the admin with secrets hidden (the rules are ``django_jobs.redaction``)."""

import json
from typing import Any

from django.utils.html import format_html

from django_jobs.redaction import redact, redact_pattern


def pretty_json(value: Any) -> str:
    """``value`` as indented JSON in a ``<pre>``, secrets hidden."""
    text = json.dumps(redact(value, redact_pattern()), indent=2, ensure_ascii=False)
    return format_html('<pre class="jobs-json">{}</pre>', text)
