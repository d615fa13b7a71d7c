"""What the operator's interfaces share: read-only numbers and operator moves.

- ``stats``: per-queue counts, throughput, running jobs and workers, shaped to read the
  partial indexes only and bounded at millions of rows;
- ``operations``: retry, cancel, run now, delete, prune, each answering with a
  ``Report`` of what moved and why the rest did not.

The admin and the ``jobs`` command call these; they never run jobs.
"""
