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
        # Operations have their own permissions: staff who may view jobs may not
        # necessarily re-run or cancel them.
        permissions = [
            ("retry_job", "Can retry jobs"),
            ("cancel_job", "Can cancel jobs"),
            ("run_job_now", "Can run delayed jobs now"),
        ]
        indexes = [
            # The claim path. Partial on READY so finished history never slows claiming,
            # and ordered exactly as the claim query sorts so LIMIT stops early.
            models.Index(
                fields=["backend", "-priority", "available_at", "id"],
                name="django_jobs_job_claim",
                condition=models.Q(state="READY"),
            ),
            # History by age, for pruning in bounded batches and "finished since" filters.
            models.Index(
                fields=["finished_at"],
                name="django_jobs_job_finished",
                condition=models.Q(state__in=["SUCCESSFUL", "FAILED", "CANCELLED"]),
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


class Worker(models.Model):
    """One running ``runjobs`` supervisor. Its heartbeat is what keeps its jobs its own."""

    id = models.CharField(max_length=255, primary_key=True, help_text="host:pid:random")
    backend = models.CharField(max_length=255, default="default")
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, help_text="Queues served; empty means all.")
    concurrency = models.PositiveIntegerField(
        default=1, help_text="Job slots (processes x threads)."
    )
    version = models.CharField(max_length=50, blank=True, default="")
    started_at = models.DateTimeField(db_default=Now())
    last_heartbeat = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return self.id


class Lease(models.Model):
    """A named lease held by one worker until it expires: leadership for maintenance.

    A row, not a session advisory lock, so it also works through PgBouncer in
    transaction mode, and shows in the admin who leads.
    """

    name = models.CharField(max_length=100, primary_key=True)
    holder = models.CharField(max_length=255)
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder}"
