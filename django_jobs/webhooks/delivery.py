"""The delivery task: POST one webhook payload, and say why when it does not go through.

A response in the 2xx range is success. A 4xx other than 408, 409, 425 and 429 means the
receiver refuses this message: retrying would not change that, so the delivery fails at
once (``DeliveryRejected``). Anything else (5xx, a timeout, a refused connection, a
redirect, which is never followed) fails the attempt with ``DeliveryFailed``, and the
delivery runs again after its backoff, up to ``DELIVERY_MAX_ATTEMPTS`` attempts.
"""

import json
import urllib.error
import urllib.request
from functools import cache
from typing import Any

from .. import __version__
from ..compat import TaskContext
from ..conf import jobs_settings
from . import signing

#: 4xx answers that are worth another attempt later.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})


class DeliveryFailed(Exception):
    """The POST did not get a 2xx answer; the delivery is retried."""


class DeliveryRejected(Exception):
    """The receiver refused the message (a 4xx); the delivery is not retried."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        # Never follow: a redirect would send the payload somewhere nobody configured.
        return None


@cache
def _opener() -> urllib.request.OpenerDirector:
    # Built on first use: building it loads the CA certificates (tens of milliseconds),
    # which every process that discovers tasks would otherwise pay at start.
    return urllib.request.build_opener(_NoRedirects)


def deliver(context: TaskContext, url: str, event: dict[str, Any]) -> dict[str, Any]:
    """POST ``event`` to ``url``, signed; return the answer's status."""
    settings = jobs_settings()
    if not settings.WEBHOOK_SECRET:
        raise DeliveryFailed(
            "DJANGO_JOBS['WEBHOOK_SECRET'] is not set, so the webhook cannot be signed; "
            "set it (the delivery is retried with backoff meanwhile)."
        )
    body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    # One id for every attempt of this delivery: receivers deduplicate on it.
    message_id = f"msg_{context.task_result.id}"
    request = urllib.request.Request(  # noqa: S310 - http(s) only, checked at enqueue
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"django_jobs/{__version__} webhooks",
            **signing.headers(settings.WEBHOOK_SECRET, message_id, body),
        },
    )
    try:
        with _opener().open(request, timeout=settings.WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace").strip()
        where = f"POST {url} answered {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        if 400 <= exc.code < 500 and exc.code not in RETRYABLE_4XX:
            raise DeliveryRejected(f"{where}; the receiver refuses this message") from None
        raise DeliveryFailed(where) from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryFailed(f"POST {url} failed: {reason}") from None
    return {"status": status, "url": url, "webhook_id": message_id}
