"""How ``runjobs`` sets up its logging, in the supervisor and in every child alike."""

import logging
import sys

#: -v 0, 1, 2+ of the management command.
LEVELS = {0: logging.WARNING, 1: logging.INFO}


def level_for(verbosity: int) -> int:
    return LEVELS.get(verbosity, logging.DEBUG)


def configure_logging(level: int) -> None:
    """Set the ``django_jobs`` logger's level; add a stderr handler only if nothing prints.

    A project's LOGGING is respected: its handlers are kept. A child process calls this
    too (with its supervisor's level), so a forked child and a spawned one, whose
    logging comes from settings only, log alike.
    """
    logger = logging.getLogger("django_jobs")
    logger.setLevel(level)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
        )
        logger.addHandler(handler)
