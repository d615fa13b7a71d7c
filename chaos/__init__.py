"""The chaos run: ``scripts/chaos`` (a few minutes) or ``scripts/chaos --short`` (CI).

A top-level package beside ``bench/``, not a pytest test, for the same reasons: it runs
its own PostgreSQL cluster (which it restarts at will, so it must never be the shared
server or pytest's test database), owns its processes for minutes, and ends in a tally
for people to read rather than in a pass/fail per function. Its workers import
``chaos.tasks`` and ``chaos.settings`` from the repository root, as they would a project's
own modules. ``run.py`` drives it; ``cluster.py`` holds the server and PgBouncer;
``checks.py`` reads the evidence at the end.
"""
