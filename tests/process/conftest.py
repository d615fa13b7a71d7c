"""Fixtures of the process tests, beside the shared ones in tests/conftest.py."""

from .pgbouncer import pgbouncer  # noqa: F401  (a fixture: PgBouncer in transaction mode)
