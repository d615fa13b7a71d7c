"""The tasks of django_jobs itself, found by the workers' discovery like any app's.

``deliver`` posts webhooks (``webhooks/delivery.py``). Its jobs are enqueued by the
protocol's outcome statements, on the finished job's backend and queue; the declaration
below only has to be valid, so it takes the first jobs backend and a queue it allows.
"""

from .backend import jobs_backends
from .protocol.webhooks import DELIVERY_MAX_ATTEMPTS
from .task import job
from .webhooks import delivery

__all__ = ["deliver"]


def _declare() -> object | None:
    backends = jobs_backends()
    if not backends:
        return None
    backend = backends[0]
    queue = "default" if not backend.queues or "default" in backend.queues else None
    return job(
        backend=backend.alias,
        queue_name=queue or sorted(backend.queues)[0],
        takes_context=True,
        max_attempts=DELIVERY_MAX_ATTEMPTS,
        retry_on=(delivery.DeliveryFailed,),
        retry_base_delay=5.0,
        retry_factor=2.0,
        retry_max_delay=3600.0,
    )(delivery.deliver)


#: The delivery task; its path is DELIVERY_TASK (tests/integration/test_webhooks.py).
deliver = _declare()
