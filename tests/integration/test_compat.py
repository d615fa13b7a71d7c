"""The Tasks framework from one module: django.tasks on Django 6, the backport on 5.2."""

import django
import pytest

from django_jobs import JobsTask, compat
from django_jobs.testing import run_jobs

pytestmark = pytest.mark.django_db


def test_compat_takes_the_framework_of_the_running_django():
    expected = "django_tasks" if django.VERSION < (6, 0) else "django.tasks"
    assert compat.USES_BACKPORT is (django.VERSION < (6, 0))
    assert compat.Task.__module__.startswith(expected)
    assert expected == compat.LOGGER_NAME
    # Our backend is the framework's: Django's handler builds it for TASKS.
    assert isinstance(compat.task_backends["default"], compat.BaseTaskBackend)


def test_a_task_declared_with_the_backports_decorator_runs_on_our_backend():
    # On Django 6 with the backport installed (Wagtail declares tasks so), the backport's
    # @task builds the backend's task_class: a JobsTask bound to django.tasks' backend.
    from testproject.example import library_tasks

    assert isinstance(library_tasks.reindex, JobsTask)
    result = library_tasks.reindex.enqueue(7)
    assert isinstance(result, compat.TaskResult)
    (done,) = run_jobs()
    assert (done.id, done.status, done.return_value) == (result.id, "SUCCESSFUL", "reindexed 7")
    # And the backport's own default backend (a second instance, built by its handler)
    # reads the same job.
    from django_tasks import default_task_backend

    assert default_task_backend.get_result(result.id).status == "SUCCESSFUL"
