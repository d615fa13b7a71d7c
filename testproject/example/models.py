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

    def __str__(self) -> str:
        return f"{self.key} in {self.pid}"
