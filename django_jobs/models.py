"""The tables: jobs, workers, the maintenance lease, schedules and their runs.

Rows that carry state (a job's, a worker's heartbeat, a schedule's next fire time) are
written only by the queue protocol (``protocol/``); the ORM reads them for the admin
and the console. Indexes are chosen for the claim and the admin at millions of rows:
each one costs every enqueue, claim and completion a write, so each says why it exists.
"""

from typing import Any

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Now

from .conf import DELIVERY_TASK
from .limits import FLOW_LIMITED, FLOW_PARKED, FLOWS
from .states import FINISHED, JobState, Receives

#: The largest id a job can have (the column is a bigint); a larger "id" names no job.
MAX_JOB_ID = 2**63 - 1


def parse_job_id(value: Any) -> int | None:
    """``value`` (a result id, a URL part) as a job id, or None if it cannot be one."""
    try:
        job_id = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return job_id if 0 < job_id <= MAX_JOB_ID else None


class BrinIndex(models.Index):
    """A BRIN index: a summary per block range, a few pages for millions of rows.

    Spelled here rather than taken from django.contrib.postgres, which would then have
    to be in INSTALLED_APPS.
    """

    #: Block ranges summarised as soon as they fill (not only at VACUUM), and small
    #: (16 pages) so that rows updated into old pages widen few ranges.
    WITH = "autosummarize = on, pages_per_range = 16"

    def create_sql(self, model: Any, schema_editor: Any, using: str = "", **kwargs: Any) -> Any:
        statement = super().create_sql(model, schema_editor, using=" USING brin", **kwargs)
        statement.parts["extra"] = f" WITH ({self.WITH}){statement.parts['extra']}"
        return statement


class BigIntArrayField(models.Field):
    """A ``bigint[]`` column, read and written as a list of ints.

    Spelled here rather than Django's ArrayField, which needs django.contrib.postgres in
    INSTALLED_APPS (check postgres.E005) for columns that only our own SQL queries.
    """

    description = "Array of big integers"

    def db_type(self, connection: Any) -> str:
        return "bigint[]"

    def get_prep_value(self, value: Any) -> Any:
        return None if value is None else [int(v) for v in value]

    def to_python(self, value: Any) -> Any:
        return None if value is None else list(value)


class Workflow(models.Model):
    """A chain, group or chord enqueued at once: what its steps share.

    The steps are jobs (``Job.workflow``); their edges, waiting counters and results
    live on their own rows, so finishing a step never writes this row. It is written
    when the workflow is enqueued, the first time a step fails for good (once, which is
    what makes ``on_error`` run once), when it is cancelled, and when its failed steps
    are retried. Its status is read from its steps (``workflows.results``).
    """

    id = models.BigAutoField(primary_key=True)
    backend = models.CharField(max_length=255, default="default")
    description = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(db_default=Now())
    step_count = models.PositiveIntegerField(default=0)
    #: The steps whose return values are the workflow's: the last step's, or a group's.
    outputs = BigIntArrayField(default=list)
    returns_list = models.BooleanField(default=False)
    #: The task to run when a step fails for good: task_path, queue_name, priority,
    #: max_attempts, args, kwargs, immutable (see protocol/workflows.py).
    on_error = models.JSONField(null=True, blank=True)
    #: Set by the statement that records the first final failure, in the same statement
    #: that enqueues ``on_error`` as this job (with a pre-drawn id).
    failed_step_id = models.BigIntegerField(null=True, blank=True)
    on_error_job_id = models.BigIntegerField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-id"]
        # Seeing, cancelling and retrying workflows is governed by the job permissions.
        default_permissions = ()
        indexes = [
            # The pruner's walk over old workflows, oldest first.
            models.Index(fields=["created_at"], name="django_jobs_workflow_created"),
        ]

    def __str__(self) -> str:
        return f"workflow #{self.pk} {self.description}".rstrip()


class Job(models.Model):
    """One enqueued call of a task, with its whole history of attempts."""

    id = models.BigAutoField(primary_key=True)
    task_path = models.CharField(max_length=255, help_text="Dotted path of the task function.")
    # Written by enqueue: proof (an HMAC under SECRET_KEY) that the path was a declared
    # task there, which lets a worker import its module (registry.py says why).
    task_proof = models.CharField(
        max_length=64, blank=True, default="", db_default="", editable=False
    )
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
    # worker_id, attempt, started_at (since 0.1: older records lack it), failed_at.
    errors = models.JSONField(default=list, db_default=models.Value([], models.JSONField()))
    # W3C trace context headers (traceparent, tracestate) of the enqueue, when tracing is
    # on: the worker continues that trace, so a request's trace shows its jobs.
    trace_context = models.JSONField(null=True, blank=True)
    # Where the outcome is POSTed once the job has finished (a delivery job of its own,
    # enqueued by the statement that records the outcome: protocol/webhooks.py). NULL,
    # not "", for none: the statements test it per row, and most rows have none.
    callback_url = models.URLField(max_length=2000, null=True, blank=True)  # noqa: DJ001

    # ── workflow steps (all empty for a job in no workflow) ──────────────────────
    # Edges are kept on both ends, as arrays, so the statement that finishes a job
    # reaches its dependents without a join (``unnest(dependents)`` of the row it just
    # updated: nothing at all for a job in no workflow), and a step reads its parents'
    # results in order. Ids are drawn before the insert, so both ends are written at once.
    workflow = models.ForeignKey(
        Workflow,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        related_name="steps",
        db_index=False,
    )
    parents = BigIntArrayField(null=True, blank=True)
    dependents = BigIntArrayField(null=True, blank=True)
    # Parents not finished yet. A BLOCKED step becomes READY in the statement that
    # brings this to 0; the row lock makes concurrent finishers count one after another.
    pending_parents = models.PositiveIntegerField(default=0, db_default=0)
    receives = models.CharField(
        max_length=5, choices=Receives.choices, blank=True, default="", db_default=""
    )

    # ── running jobs: progress and cancellation ──────────────────────────────────
    # {"done", "total", "message", "attempt", "updated_at"}, written by the worker at
    # most once a second per job.
    progress = models.JSONField(null=True, blank=True)
    # A cancel asked for while the job ran: the worker stops it, and no statement puts
    # it back to READY (it ends CANCELLED).
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=255, blank=True, default="", db_default="")

    # Flow control (limits.py). All NULL (not "") for a job that uses none of it: the
    # partial indexes below leave NULLs out, so such a job has no entry in any of them.
    unique_key = models.TextField(  # noqa: DJ001
        null=True, blank=True, help_text="Held while the job counts as a duplicate."
    )
    concurrency_key = models.TextField(null=True, blank=True)  # noqa: DJ001
    concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most jobs of its concurrency key running at once."
    )
    flow = models.CharField(  # noqa: DJ001
        max_length=16,
        null=True,
        blank=True,
        choices=[(FLOW_LIMITED, "limited"), (FLOW_PARKED, "waiting for a slot of its key")],
        help_text="How a claim reaches the job; empty when no limit applies.",
    )

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
            # and ordered exactly as the claim query sorts so LIMIT stops early. Limited
            # jobs are kept out, so a backlog held back by a limit is never walked over.
            models.Index(
                fields=["backend", "-priority", "available_at", "id"],
                name="django_jobs_job_claim",
                condition=models.Q(state="READY", flow__isnull=True),
            ),
            # The limited claim: one range per (queue, task), the unit its limiters
            # apply to, so a claim reads only the ranges whose limiters have room.
            models.Index(
                fields=["backend", "queue_name", "task_path", "-priority", "available_at", "id"],
                name="django_jobs_job_limited",
                condition=models.Q(state="READY", flow=FLOW_LIMITED),
            ),
            # Jobs parked behind a full concurrency key, in claim order per key: a freed
            # slot takes the next one from here.
            models.Index(
                fields=["backend", "concurrency_key", "-priority", "available_at", "id"],
                name="django_jobs_job_parked",
                condition=models.Q(state="READY", flow=FLOW_PARKED),
            ),
            # History by age, for pruning in bounded batches and "finished since" filters.
            models.Index(
                fields=["finished_at"],
                name="django_jobs_job_finished",
                condition=models.Q(state__in=[s.value for s in FINISHED]),
            ),
            # Who holds what: rescue of a lost worker, and "running now" in the admin.
            models.Index(
                fields=["worker_id"],
                name="django_jobs_job_running",
                condition=models.Q(state="RUNNING"),
            ),
            # The admin's changelist, newest first, filtered (admin/jobs.py). Each index
            # here costs every enqueue, claim and completion a write, so there are few:
            #
            # By queue, by task, or both. The queue first: a task filter names every
            # queue present (stats.queue_names, one probe each) to use it.
            models.Index(
                fields=["queue_name", "task_path", "id"], name="django_jobs_job_queue_task"
            ),
            # By state, for the states that are rare, so a filter on them does not walk
            # the history to find a few. Partial: jobs that succeed never enter it.
            # READY and RUNNING have their own indexes above; SUCCESSFUL rows are the
            # bulk of the table, found at once newest first.
            models.Index(
                fields=["state", "id"],
                name="django_jobs_job_rare_state",
                condition=models.Q(state__in=["FAILED", "CANCELLED", "BLOCKED"]),
            ),
            # "Enqueued in the last hour": enqueued_at grows with the table, so a BRIN
            # index (almost free to keep up) finds the recent block ranges, and none at
            # all when nothing was enqueued, where the primary key would be walked to
            # its end.
            BrinIndex(fields=["enqueued_at"], name="django_jobs_job_enqueued"),
            # A workflow's steps (its page, its status, cancelling or retrying it).
            # Partial: jobs in no workflow never enter it, so they pay nothing for it.
            models.Index(
                fields=["workflow", "id"],
                name="django_jobs_job_workflow",
                condition=models.Q(workflow__isnull=False),
            ),
            # "Has it steps left to run?" in one probe (the admin's list of workflows).
            # Steps enter it while unfinished only; other jobs never.
            models.Index(
                fields=["workflow"],
                name="django_jobs_job_workflow_open",
                condition=models.Q(
                    workflow__isnull=False, state__in=["BLOCKED", "READY", "RUNNING"]
                ),
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
            models.CheckConstraint(
                condition=models.Q(receives__in=Receives.values),
                name="django_jobs_job_receives_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(flow__isnull=True) | models.Q(flow__in=FLOWS),
                name="django_jobs_job_flow_valid",
            ),
            # Unique jobs: one row holds a key at a time. The insert that finds the key
            # taken waits for the holder's transaction, then sees its row (ON CONFLICT).
            models.UniqueConstraint(
                fields=["backend", "task_path", "unique_key"],
                name="django_jobs_job_unique_key",
                condition=models.Q(unique_key__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} #{self.pk} ({self.state})"


class Limiter(models.Model):
    """A limit shared by every worker: ``task:<path>``, ``queue:<name>`` or ``key:<key>``.

    Task and queue rows are written from the declarations when a worker first claims;
    key rows when a claim first meets a key. Claims lock the rows of the limits they
    take from (skipping rows another claim holds) and count in them; the statements
    that end a limited job's attempt give its slots back. See protocol/limits.py.
    """

    id = models.BigAutoField(primary_key=True)
    backend = models.CharField(max_length=255, default="default")
    name = models.TextField()
    rate_limit = models.PositiveIntegerField(null=True, blank=True)
    rate_period = models.FloatField(null=True, blank=True, help_text="Seconds.")
    rate_text = models.CharField(max_length=50, blank=True, default="", db_default="")
    concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Most jobs running at once; empty: no such limit."
    )
    running = models.IntegerField(default=0, db_default=0)
    parked = models.IntegerField(default=0, db_default=0, help_text="Jobs waiting for a slot.")
    wake = models.BooleanField(
        default=False, db_default=False, help_text="A slot freed while jobs were parked."
    )
    #: Starts per sub-window of the rate's period, {sub-window number: count}.
    starts = models.JSONField(default=dict, db_default=models.Value({}, models.JSONField()))
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["backend", "name"]
        constraints = [
            models.UniqueConstraint(fields=["backend", "name"], name="django_jobs_limiter_name"),
        ]
        indexes = [
            # Keys whose parked jobs may start: every limited claim looks here first.
            models.Index(
                fields=["backend", "name"],
                name="django_jobs_limiter_woken",
                condition=models.Q(wake=True),
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Dashboard(Job):
    """The admin dashboard's entry in the admin index (no table of its own).

    Django's admin index lists models, not pages; this proxy gives the dashboard a row
    there, next to Jobs. Its admin only redirects, and it adds no permissions: the
    dashboard needs the view permission on jobs.
    """

    class Meta:
        proxy = True
        verbose_name = "dashboard"
        verbose_name_plural = "dashboard"
        default_permissions = ()


#: The task that POSTs webhooks (declared in django_jobs/tasks.py); its jobs are the
#: deliveries, enqueued by the protocol's outcome statements (protocol/webhooks.py).


class WebhookDeliveryManager(models.Manager):
    def get_queryset(self) -> models.QuerySet:
        return super().get_queryset().filter(task_path=DELIVERY_TASK)


class WebhookDelivery(Job):
    """The jobs that POST webhooks (no table of their own): the admin lists them apart."""

    objects = WebhookDeliveryManager()

    class Meta:
        proxy = True
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        default_permissions = ("view",)


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
    #: When the maintenance leader declared it lost (no heartbeat for WORKER_TIMEOUT);
    #: cleared by its next heartbeat. Marks each loss once, for the worker_lost signal.
    lost_at = models.DateTimeField(null=True, blank=True)
    #: Its WORKER_TIMEOUT: the rescue waits this long after its last heartbeat, as the
    #: worker's own fence counts on (NULL: the maintenance leader's setting).
    worker_timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds of silence before it is declared lost."
    )

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


class ScheduleSource(models.TextChoices):
    ADMIN = "admin", "admin"
    CODE = "code", "settings"
    #: Was declared in settings and is not any more: disabled, kept for its history.
    REMOVED = "removed", "removed from settings"


class MisfirePolicy(models.TextChoices):
    ONCE = "once", "run once now"
    SKIP = "skip", "skip missed runs"
    ALL = "all", "run each missed run (up to max catch-up)"


# Jobs are pruned and deleted with plain SQL, not through the ORM, so the rows that point
# at a job (or a schedule) must be cleared by the database itself. Django 6.1 says so with
# DB_SET_NULL and DB_CASCADE; before it, the ORM-level action stands in for the model
# state, and migration 0007 puts the same ON DELETE clause on the constraints.
DB_SET_NULL = getattr(models, "DB_SET_NULL", models.SET_NULL)
DB_CASCADE = getattr(models, "DB_CASCADE", models.CASCADE)

#: Most missed runs one fire of a schedule enqueues (misfire policy "all"): a schedule
#: every second that was off for a month must not enqueue 2.6 million jobs at once.
MAX_CATCHUP = 1000


class Schedule(models.Model):
    """Enqueue a task on a cron expression or every N seconds; fired by the workers.

    Rows come from the admin, or from ``TASKS[alias]["OPTIONS"]["SCHEDULES"]`` (written
    when a worker starts). Timing and bookkeeping are changed by ``scheduler.py``
    through the queue protocol.
    """

    name = models.CharField(max_length=200, unique=True)
    source = models.CharField(
        max_length=16,
        choices=ScheduleSource.choices,
        default=ScheduleSource.ADMIN,
        db_default=ScheduleSource.ADMIN,
        help_text="Where the schedule is declared. Settings own the fields they declare.",
    )
    backend = models.CharField(
        max_length=255, default="default", help_text="TASKS alias the jobs are enqueued through."
    )
    task_path = models.CharField("task", max_length=255, help_text="A declared task.")
    args = models.JSONField(default=list, blank=True, help_text="A JSON list.")
    kwargs = models.JSONField(default=dict, blank=True, help_text="A JSON object.")
    cron = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="Five fields (minute hour day-of-month month day-of-week) or @hourly, "
        "@daily, @weekly, @monthly, @yearly, @midnight. Leave empty for an interval.",
    )
    interval_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Run every this many seconds (instead of cron)."
    )
    timezone = models.CharField(
        max_length=64, default="UTC", help_text="IANA name the cron fields are read in."
    )
    enabled = models.BooleanField(default=True)
    queue_name = models.CharField(max_length=255, default="default")
    priority = models.SmallIntegerField(default=0)
    start_at = models.DateTimeField(null=True, blank=True, help_text="No runs before this.")
    end_at = models.DateTimeField(null=True, blank=True, help_text="No runs after this.")
    misfire_policy = models.CharField(
        max_length=8,
        choices=MisfirePolicy.choices,
        default=MisfirePolicy.ONCE,
        help_text="What to do with runs that fell due while no worker was up.",
    )
    max_catchup = models.PositiveIntegerField(
        default=10,
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CATCHUP)],
        help_text=f"With 'run each missed run': at most this many, the newest "
        f"(1 to {MAX_CATCHUP}).",
    )
    next_run_at = models.DateTimeField(
        null=True, blank=True, help_text="Next fire time; empty once the schedule has ended."
    )
    last_run_at = models.DateTimeField(null=True, blank=True)
    # DB-level SET NULL: jobs are pruned with plain SQL, not through the ORM.
    last_job = models.ForeignKey(
        Job, null=True, blank=True, on_delete=DB_SET_NULL, related_name="+"
    )
    last_error = models.TextField(
        blank=True, default="", help_text="Why the last fire failed; empty when healthy."
    )
    created_at = models.DateTimeField(db_default=Now())
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["name"]
        permissions = [("run_schedule_now", "Can run schedules now")]
        indexes = [
            # The scheduler's tick: enabled schedules of one backend by due time.
            models.Index(
                fields=["backend", "next_run_at"],
                name="django_jobs_schedule_due",
                condition=models.Q(enabled=True),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=(
                    (~models.Q(cron="") & models.Q(interval_seconds__isnull=True))
                    | (models.Q(cron="") & models.Q(interval_seconds__gte=1))
                ),
                name="django_jobs_schedule_cron_xor_interval",
            ),
            models.CheckConstraint(
                condition=models.Q(source__in=ScheduleSource.values),
                name="django_jobs_schedule_source_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(misfire_policy__in=MisfirePolicy.values),
                name="django_jobs_schedule_misfire_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(max_catchup__gte=1),
                name="django_jobs_schedule_catchup_min",
                violation_error_message="Max catch-up must be at least 1.",
            ),
            models.CheckConstraint(
                condition=models.Q(max_catchup__lte=MAX_CATCHUP),
                name="django_jobs_schedule_catchup_max",
                violation_error_message=f"Max catch-up must be at most {MAX_CATCHUP}.",
            ),
            models.CheckConstraint(
                condition=models.Q(priority__gte=-100, priority__lte=100),
                name="django_jobs_schedule_priority_range",
                violation_error_message="Priority must be between -100 and 100.",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_broken(self) -> bool:
        return bool(self.last_error)


class ScheduleRun(models.Model):
    """One fire of a schedule. unique(schedule, fire_at) makes each fire time enqueue once."""

    id = models.BigAutoField(primary_key=True)
    # The unique (schedule, fire_at) index serves lookups by schedule too.
    schedule = models.ForeignKey(
        Schedule, on_delete=DB_CASCADE, related_name="runs", db_index=False
    )
    fire_at = models.DateTimeField(help_text="The fire time this run is for.")
    # Indexed (the default) so that pruning jobs finds the runs to clear quickly.
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=DB_SET_NULL, related_name="+")
    manual = models.BooleanField(default=False, help_text="Started with 'run now'.")
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["-fire_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "fire_at"], name="django_jobs_schedulerun_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} at {self.fire_at:%Y-%m-%d %H:%M:%S}"


class ApiToken(models.Model):
    """A credential for the HTTP API (``django_jobs.api``), scoped to tasks and actions.

    Only a SHA-256 digest of the token is stored: the token itself is shown once, when it
    is created in the admin. Tokens are 256 random bits, so a fast hash is enough (there
    is nothing to guess); the lookup is by digest.
    """

    name = models.CharField(max_length=100, unique=True, help_text="Who or what uses it.")
    #: The token's first characters, to tell tokens apart in the admin and in logs.
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    can_read = models.BooleanField(default=True, help_text="Read jobs (GET).")
    can_enqueue = models.BooleanField(default=False, help_text="Enqueue jobs (POST /jobs/).")
    can_cancel = models.BooleanField(default=False, help_text="Cancel jobs that have not started.")
    can_scrape_metrics = models.BooleanField(
        default=False, help_text="Read the Prometheus metrics view."
    )
    tasks = models.JSONField(
        default=list,
        blank=True,
        help_text='Task paths this token may act on ("app.tasks.send", "app.tasks.*"); '
        '["*"] for every task. Enqueueing also needs the task in DJANGO_JOBS["API_TASKS"].',
    )
    is_active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never.")
    created_at = models.DateTimeField(db_default=Now())
    created_by = models.CharField(max_length=150, blank=True, default="", editable=False)
    #: Updated at most once a minute, so a busy client does not write on every request.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
