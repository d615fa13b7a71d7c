"""Run the leader's chores once from a test, on a worker-style connection of their own."""

from django_jobs.services.rescuer import Rescuer
from django_jobs.worker import dbconn


def rescue_all(worker_timeout: float = 30) -> list:
    """One rescue round, as the maintenance leader runs it; what it rescued."""
    conn = dbconn.connect("default", purpose="test")
    try:
        with conn.cursor() as cur:
            return Rescuer(worker_timeout=worker_timeout).run_once(cur)
    finally:
        conn.close()
