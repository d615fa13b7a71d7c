"""The worker's own psycopg connections, built from a Django database alias.

The queue protocol keeps one long-lived connection whatever the project's
``CONN_MAX_AGE`` (reconnecting per job costs several times the work itself); task
code keeps Django's usual per-thread connection handling.
"""

import psycopg
from django.db import connections


def connect(alias: str, *, purpose: str) -> psycopg.Connection:
    """Open an autocommit connection to database ``alias`` with Django's settings for it."""
    params = connections[alias].get_connection_params()
    # Django's adapter context and cursor class are for its ORM; we speak plain psycopg.
    params.pop("context", None)
    params.pop("cursor_factory", None)
    # A silently dropped network must not hang the worker's loop on connect.
    params.setdefault("connect_timeout", 10)
    conn = psycopg.connect(**params, autocommit=True)
    # UTC like Django, and a name that shows up in pg_stat_activity.
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("SELECT set_config('application_name', %s, false)", [f"django_jobs {purpose}"])
    return conn
