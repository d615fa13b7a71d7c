"""The ``runjobs`` process's logging: readable without the project editing ``LOGGING``.

``configure(verbosity)`` runs in the supervisor and in each child (spawned children
configure logging afresh through ``django.setup()``, so they need it too). It keeps every
handler and level the project's ``LOGGING`` sets, and only fills the gaps:

- the ``django_jobs`` logger's level follows ``-v`` (WARNING, INFO, DEBUG);
- if neither that logger nor the root logger has a handler, one writes to stderr with a
  time, a level, the logger's name and the process id;
- the Tasks framework's own per-task lines (``Task id=… state=…`` at INFO, from the
  ``django.tasks`` logger, ``django_tasks`` on Django 5.2) repeat ours without a format:
  unless ``LOGGING`` names that logger, they are shown from ``-v 2`` only. Its ERROR line
  for a failed task stays (error-reporting tools and ``mail_admins`` rely on it).
"""

import logging
import sys

from django.conf import settings

from ..compat import LOGGER_NAME

FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
_LEVELS = {0: logging.WARNING, 1: logging.INFO}


def configure(verbosity: int) -> None:
    """Set django_jobs's level from ``verbosity`` and add what the project left out."""
    ours = logging.getLogger("django_jobs")
    ours.setLevel(_LEVELS.get(verbosity, logging.DEBUG))
    if not ours.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        ours.addHandler(handler)
    if verbosity < 2 and not _configured(LOGGER_NAME):
        logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)


def _configured(name: str) -> bool:
    """Whether the project's LOGGING setting names the logger ``name``."""
    config = getattr(settings, "LOGGING", None) or {}
    return name in (config.get("loggers") or {})
