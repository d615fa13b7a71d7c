"""Prometheus metrics: counters and histograms from the processes where jobs happen,
gauges from cheap queries at scrape time.

- ``receivers``: Django's task signals and ours, and one run wrapper, add to this
  process's tally (``django_jobs.tally``);
- ``gauges``: queue depths, oldest ready job, workers and slots, read through
  ``console/stats.py`` and cached for a few seconds;
- ``exposition``: the Prometheus collector over both (needs ``prometheus-client``: the
  ``prometheus`` extra), the ``runjobs --metrics-port`` server;
- ``views``: the view a project mounts (``django_jobs.metrics.urls``).

Nothing here is imported unless metrics are used: ``runjobs --metrics-port``, the
view, or ``DJANGO_JOBS["METRICS"] = True``.
"""

from .receivers import disable, enable

__all__ = ["disable", "enable"]
