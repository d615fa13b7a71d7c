"""Settings for the test project: the demo, the test suite and manual runs.

Everything comes from the environment (django-environ). With no DATABASE_URL an
embedded PostgreSQL server is started, so a new checkout needs nothing but Python.
"""

import os
from pathlib import Path

import django
import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env.str("SECRET_KEY", default="django-jobs-test-project-not-secret")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])

if "DATABASE_URL" not in os.environ:
    from testproject import embedded_pg

    os.environ["DATABASE_URL"] = embedded_pg.database_url()

DATABASES = {"default": env.db("DATABASE_URL")}
# The test suite makes its own database; name it after the configured one.
DATABASES["default"].setdefault("TEST", {})
# Behind PgBouncer in transaction mode (tests/process/test_pgbouncer.py): the LISTEN
# connection's own, direct route to the same database.
if os.environ.get("JOBS_LISTEN_DATABASE_URL"):
    DATABASES["listen"] = env.db("JOBS_LISTEN_DATABASE_URL")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_jobs",
    "testproject.example",
    # The example of docs/howto/testing.md, whose tests are the page's examples.
    "testproject.accounts",
]

TASKS = {
    "default": {
        "BACKEND": "django_jobs.backend.JobsBackend",
        "QUEUES": ["default", "emails", "slow"],
        # Tests shorten the timings through the environment; the defaults are the library's.
        "OPTIONS": {
            "POLL_INTERVAL": env.float("JOBS_POLL_INTERVAL", default=1.0),
            "HEARTBEAT_INTERVAL": env.float("JOBS_HEARTBEAT_INTERVAL", default=5.0),
            "WORKER_TIMEOUT": env.float("JOBS_WORKER_TIMEOUT", default=30.0),
            "MAINTENANCE_INTERVAL": env.float("JOBS_MAINTENANCE_INTERVAL", default=5.0),
            "RETRY_BASE_DELAY": env.float("JOBS_RETRY_BASE_DELAY", default=1.0),
            "LISTEN_DATABASE": "listen" if "listen" in DATABASES else None,
            # The flow control examples; JOBS_TASK_MODULES= (empty) leaves them out.
            "TASK_MODULES": env.list(
                "JOBS_TASK_MODULES", default=["testproject.example.flow_tasks"]
            ),
        },
    }
}

DJANGO_JOBS = {
    # Tests sign and verify webhooks with this; never use a checked-in secret in production.
    "WEBHOOK_SECRET": env.str(
        "JOBS_WEBHOOK_SECRET", default="test-only-webhook-secret-0123456789"
    ),
    # Callback URLs given over the HTTP API may point at a receiver on this machine.
    "WEBHOOK_ALLOWED_URLS": ["http://127.0.0.1:", "http://localhost:"],
    "API_TASKS": ["testproject.example.tasks.add", "testproject.example.tasks.sleep_for"],
    # Process tests turn these on through the environment.
    "METRICS": env.bool("JOBS_METRICS", default=False),
    "TRACING": env.bool("JOBS_TRACING", default=False),
}

if os.environ.get("JOBS_TRACE_FILE"):
    from testproject import tracing

    tracing.configure(os.environ["JOBS_TRACE_FILE"])

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "testproject" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Django 6.1 configures mail with MAILERS and deprecates EMAIL_BACKEND; 5.2 and 6.0 know
# only the latter.
if django.VERSION >= (6, 1):
    MAILERS = {"default": {"BACKEND": "django.core.mail.backends.console.EmailBackend"}}
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_jobs": {"handlers": ["console"], "level": env.str("JOBS_LOG_LEVEL", "INFO")},
        # Django logs every task start and finish at INFO ("Task id=… state=…"), which our
        # worker's own lines already say with the duration. Left at INFO, each record is
        # built and then dropped by the handlers' filters: a measurable share of a short
        # job's cost (docs/performance.md).
        "django.tasks": {"level": env.str("DJANGO_TASKS_LOG_LEVEL", "WARNING")},
        # The same lines from the django-tasks backport, on Django 5.2.
        "django_tasks": {"level": env.str("DJANGO_TASKS_LOG_LEVEL", "WARNING")},
    },
}
