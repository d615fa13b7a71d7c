from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from . import tasks, workflows


def enqueue_samples() -> list[str]:
    """Enqueue one of each example task; return the job ids."""
    with transaction.atomic():
        results = [
            tasks.add.enqueue(2, 3),
            tasks.sleep_for.enqueue(2),
            tasks.always_fails.enqueue(),
            tasks.send_welcome_email.enqueue("new-user@example.com"),
            tasks.report_attempt.enqueue(),
            tasks.async_add.enqueue(20, 22),
        ]
    return [r.id for r in results]


def home(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        ids = enqueue_samples()
        messages.success(request, f"Enqueued jobs {', '.join(ids)}.")
        enqueued = workflows.enqueue_all()
        messages.success(
            request, "Enqueued " + ", ".join(f"the {name} {i}" for name, i in enqueued.items())
        )
        return redirect("home")
    return render(request, "example/home.html")
