"""``manage.py jobs_worker``: the same as ``runjobs``, under a name no other app uses.

django-extensions also ships a ``runjobs`` command; whichever app comes first in
INSTALLED_APPS owns that name. This alias always reaches django_jobs's worker.
"""

from .runjobs import Command as RunJobsCommand


class Command(RunJobsCommand):
    pass
