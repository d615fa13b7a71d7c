from typing import Any

from django.core.management.base import BaseCommand

from testproject.example import workflows
from testproject.example.views import enqueue_samples


class Command(BaseCommand):
    help = "Enqueue one job of each example task, and the example workflows (for the demo)."

    def handle(self, *args: Any, **options: Any) -> None:
        ids = enqueue_samples()
        self.stdout.write(f"Enqueued sample jobs {', '.join(ids)}")
        for name, result_id in workflows.enqueue_all().items():
            self.stdout.write(f"Enqueued the {name} {result_id}")
