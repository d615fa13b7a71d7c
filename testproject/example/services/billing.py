"""Tasks in a module no worker discovers: found through the job's proof of declaration."""

from django_jobs import job


@job(max_attempts=2, timeout=5.0)
def invoice_total(amounts: list[int]) -> int:
    return sum(amounts)


@job(queue_name="emails")
def send_invoice(invoice_id: int) -> str:
    return f"invoice {invoice_id} sent"
