"""What a web process loads: enqueueing and the admin never bring in the runtime."""

import os
import subprocess
import sys

from ..conftest import ROOT


def test_a_web_process_that_enqueues_never_loads_the_runtime():
    # A fresh interpreter: what Django loads at start (apps, admin autodiscovery, checks)
    # plus an enqueue, and then which of our modules are in memory.
    code = """
import sys, django
django.setup()
from django.db import connection
from testproject.example import tasks
with connection.cursor():
    pass
from django_jobs.backend import get_backend
job = get_backend().new_job(tasks.add, (1, 2), {})
import django.contrib.admin
django.contrib.admin.autodiscover()
print(" ".join(sorted(m for m in sys.modules if m.startswith("django_jobs"))))
"""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert "django_jobs.backend" in loaded
    assert "django_jobs.admin.jobs" in loaded
    assert not {m for m in loaded if m.startswith(("django_jobs.worker", "django_jobs.services"))}
