"""The runtime: the ``runjobs`` process and the children that run jobs.

- ``supervisor``: the loop of one ``runjobs`` process: wait (notify | poll), claim for
  free slots, hand jobs to the pool, heartbeat, host the services, stop gracefully;
- ``pool``: where claimed jobs run: child processes (prefork) or threads in-process;
- ``child``: a child process's side of the pipe;
- ``executor``: run ONE claimed job and describe what happened;
- ``outcomes``: buffer outcomes and record them in batches, fenced, then signal them;
- ``listener``: LISTEN/NOTIFY on a dedicated connection; ``dbconn``: the worker's own
  connections, one of which rides out database outages; ``timelimits``: soft limits.

Nothing here writes SQL: every statement is the protocol's (``django_jobs.protocol``).
Enqueueing never imports this package.
"""
