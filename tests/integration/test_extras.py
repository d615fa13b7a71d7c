"""The optional extras stay optional: off, none of their packages is even imported; on
without the package, the system checks say which extra to install."""

import os
import subprocess
import sys

from ..conftest import ROOT

OPTIONAL = ("prometheus_client", "opentelemetry", "sentry_sdk")
# Our modules that use them (the integrations package itself only names them, for the
# checks; the admin loads django_jobs.api.auth to make tokens).
OURS = ("django_jobs.metrics", "django_jobs.integrations.", "django_jobs.api.views")

# Makes the optional packages unimportable, as on a machine without the extras.
BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
"""


def run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_worker_without_the_extras_imports_none_of_them(database_url):
    # Installed or not, unused extras are not loaded: a worker runs a job, and then
    # neither the packages nor our modules for them are in memory.
    code = (
        BLOCK.format(blocked=OPTIONAL)
        + """
import django
django.setup()
from testproject.example import tasks
from django_jobs.worker.supervisor import Supervisor
result = tasks.add.enqueue(1, 2)
Supervisor(burst=True, listen=False).run()
result.refresh()
assert result.return_value == 3, result.status
print(" ".join(sorted(m for m in sys.modules)))
"""
    )
    done = run(code, {"DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    loaded = done.stdout.split()
    assert not [m for m in loaded if m.split(".")[0] in OPTIONAL]
    assert not [m for m in loaded if m.startswith(OURS)]


def test_turning_an_extra_on_without_its_package_is_a_clear_check_error():
    code = (
        BLOCK.format(blocked=OPTIONAL)
        + """
import django
from django.conf import settings
django.setup()  # the integrations that cannot load are skipped, not fatal
settings.DJANGO_JOBS = {"METRICS": True, "TRACING": True, "SENTRY": True}
from django_jobs.checks import check_jobs_settings
for message in check_jobs_settings():
    print(message.id, message.msg, message.hint)
"""
    )
    done = run(code, {"JOBS_METRICS": "true", "JOBS_TRACING": "true"})
    assert done.returncode == 0, done.stderr
    for key, extra in (("METRICS", "prometheus"), ("TRACING", "otel"), ("SENTRY", "sentry")):
        assert f"DJANGO_JOBS[{key!r}] is on" in done.stdout
        assert f"pip install 'django-pg-jobs[{extra}]'" in done.stdout
    assert done.stdout.count("django_jobs.E021") == 3
