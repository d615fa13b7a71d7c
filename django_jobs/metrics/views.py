"""The metrics view for a project's web process: gauges from the database, and the
counters of this process (enqueues, cancels; with ``DJANGO_JOBS["METRICS"]``).

Protected like the admin (a staff user with the view permission on jobs) or by an API
token with ``can_scrape_metrics`` (``Authorization: Bearer …``, which Prometheus sends
with ``authorization: {credentials: …}`` in its scrape config).
"""

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from ..api.auth import authenticate
from ..api.errors import ApiError

# First: without prometheus-client, it raises ImproperlyConfigured naming the extra.
from .exposition import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, install


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    try:
        caller = authenticate(request)
        caller.require("metrics")
        if caller.user is not None and not caller.user.is_staff:
            raise ApiError(403, "not_staff", "The metrics are for staff users and tokens.")
    except ApiError as error:
        return error.response()
    install()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
