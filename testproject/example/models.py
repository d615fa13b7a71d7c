from django.db import models


class LedgerEntry(models.Model):
    """A row per unit of work; the unique key makes a second run of the same job fail."""

    key = models.CharField(max_length=100, unique=True)
    job_attempt = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.key


class Execution(models.Model):
    """A row per run of a job (no unique key): counts how often each job really ran."""

    key = models.CharField(max_length=100, db_index=True)
    pid = models.PositiveIntegerField()
    #: When the run began and ended (time.time() in the process that ran it), for tests
    #: that look for runs overlapping.
    started = models.FloatField(null=True, blank=True)
    finished = models.FloatField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} in {self.pid}"
