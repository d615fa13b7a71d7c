"""What a web process does, run as its own process (``python -m tests.process.web_client
FAILED_JOB_ID``) against whatever DATABASE_URL says, e.g. a PgBouncer in transaction mode.

It enqueues inside a transaction that rolls back and inside one that commits, loads the
admin's pages and retries a failed job through the admin, then prints a JSON report on
its last line for the test to check.
"""

import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402
from django.urls import reverse  # noqa: E402

from testproject.example import tasks  # noqa: E402


class Rollback(Exception):
    pass


def main(failed_job_id: int) -> dict:
    report: dict = {}
    try:
        with transaction.atomic():
            report["rolled_back"] = int(tasks.add.enqueue(1, 2).id)
            raise Rollback
    except Rollback:
        pass
    with transaction.atomic():
        report["committed"] = int(tasks.add.enqueue(2, 3).id)

    # The same session would have the same process id; a pooler hands out its own.
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        report["pooled"] = cur.fetchone()[0] != connection.connection.info.backend_pid

    setup_test_environment()  # lets the test client's host in
    user = get_user_model().objects.create_superuser("pgbouncer-admin", "a@example.com", "x")
    client = Client()
    client.force_login(user)
    pages = {
        "jobs": reverse("admin:django_jobs_job_changelist"),
        "failed jobs": reverse("admin:django_jobs_job_changelist") + "?state__exact=FAILED",
        "job": reverse("admin:django_jobs_job_change", args=[report["committed"]]),
        "dashboard": reverse("admin:django_jobs_job_dashboard"),
        "workers": reverse("admin:django_jobs_worker_changelist"),
        "schedules": reverse("admin:django_jobs_schedule_changelist"),
    }
    report["pages"] = {name: client.get(url).status_code for name, url in pages.items()}
    retried = client.post(reverse("admin:django_jobs_job_retry", args=[failed_job_id]))
    report["retry"] = retried.status_code
    return report


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))
