"""The job table. Rows are written only by the queue protocol (``protocol.py``)."""

from django.db import models
from django.db.models.functions import Now

from .states import JobState


class Job(models.Model):
    """One enqueued call of a task, with its whole history of attempts."""

    id = models.BigAutoField(primary_key=True)
    task_path = models.CharField(max_length=255, help_text="Dotted path of the task function.")
    queue_name = models.CharField(max_length=255, default="default")
    priority = models.SmallIntegerField(default=0, db_default=0)
    state = models.CharField(
        max_length=16, choices=JobState.choices, default=JobState.READY, db_default="READY"
    )
    backend = models.CharField(
        max_length=255, default="default", help_text="TASKS alias the job was enqueued through."
    )
    args = models.JSONField(default=list, db_default=models.Value([], models.JSONField()))
    kwargs = models.JSONField(default=dict, db_default=models.Value({}, models.JSONField()))
    return_value = models.JSONField(null=True, blank=True)

    # What the caller asked for (``Task.run_after``), kept apart from ``available_at``,
    # which retries move: TaskResult.task.run_after must report the former.
    run_after = models.DateTimeField(null=True, blank=True)
    available_at = models.DateTimeField(db_default=Now(), help_text="Earliest next start.")
    enqueued_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # ``attempts`` also fences completions: a worker may finish a job only while the
    # row is RUNNING with the attempt number it claimed.
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    max_attempts = models.PositiveIntegerField(default=1, db_default=1)
    worker_id = models.CharField(max_length=255, blank=True, default="", db_default="")
    # One entry per attempt, so ``len(worker_ids) == attempts`` as django.tasks expects.
    worker_ids = models.JSONField(default=list, db_default=models.Value([], models.JSONField()))
    # One dict per failed attempt: exception_class_path, message, traceback,
    # worker_id, attempt, failed_at.
    errors = models.JSONField(default=list, db_default=models.Value([], models.JSONField()))

    class Meta:
        ordering = ["-id"]
        indexes = [
            # The claim path. Partial on READY so finished history never slows claiming,
            # and ordered exactly as the claim query sorts so LIMIT stops early.
            models.Index(
                fields=["backend", "-priority", "available_at", "id"],
                name="django_jobs_job_claim",
                condition=models.Q(state="READY"),
            ),
            # Who holds what: rescue of a lost worker, and "running now" in the admin.
            models.Index(
                fields=["worker_id"],
                name="django_jobs_job_running",
                condition=models.Q(state="RUNNING"),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(state__in=JobState.values), name="django_jobs_job_state_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(priority__gte=-100, priority__lte=100),
                name="django_jobs_job_priority_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} #{self.pk} ({self.state})"
