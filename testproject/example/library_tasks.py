"""Tasks declared as a library declares them on the django-tasks backport (Wagtail's search
does): the backport's own ``@task``, even on Django 6, where our backend is django.tasks'."""

# The point: imported from the backport, not through django_jobs.compat.
from django_tasks import task


@task()
def reindex(pk: int) -> str:
    return f"reindexed {pk}"
