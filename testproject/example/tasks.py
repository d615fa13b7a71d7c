"""Example tasks: Django's own ``@task`` and our ``@job`` side by side."""

import asyncio
import time

from django.core.mail import send_mail
from django.tasks import task

from django_jobs import job


@task
def add(a: int, b: int) -> int:
    return a + b


@job(queue_name="slow")
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@job(max_attempts=3)
def always_fails(message: str = "this task fails on purpose") -> None:
    raise RuntimeError(message)


@task(queue_name="emails")
def send_welcome_email(address: str) -> int:
    return send_mail(
        "Welcome",
        "Thanks for trying django_jobs.",
        "noreply@example.com",
        [address],
    )


@task(takes_context=True)
def report_attempt(context) -> int:
    return context.attempt


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b
