# With pytest-django: run the jobs a view enqueued, in the test's own transaction.
# [imports]
import socket
from datetime import timedelta
from unittest import mock

from django.contrib.auth import get_user_model
from django.core.management import call_command

from django_jobs.testing import assert_enqueued, assert_not_enqueued, run_jobs

from ..tasks import send_welcome_email

# [/imports]


# [sign-up]
def test_sign_up_enqueues_the_welcome_email(client, db, mailoutbox):
    response = client.post("/accounts/sign-up/", {"email": "ada@example.com"})
    assert response.status_code == 201

    user = get_user_model().objects.get(email="ada@example.com")
    assert_enqueued(send_welcome_email, args=[user.pk], queue_name="emails")
    assert mailoutbox == []  # enqueued, not sent: no worker ran it yet

    results = run_jobs()

    assert [r.status for r in results] == ["SUCCESSFUL"]
    assert results[0].return_value == 1
    assert mailoutbox[0].to == ["ada@example.com"]


# [/sign-up]


# [bad-input]
def test_a_bad_address_enqueues_nothing(client, db):
    response = client.post("/accounts/sign-up/", {"email": "not an address"})
    assert response.status_code == 400
    assert_not_enqueued(send_welcome_email)


# [/bad-input]


# [retries]
def test_a_failed_send_is_retried(db, mailoutbox):
    user = get_user_model().objects.create_user("bob", "bob@example.com")
    send_welcome_email.enqueue(user.pk)
    outage = [ConnectionError("SMTP server unreachable"), 1]

    with mock.patch("testproject.accounts.tasks.send_mail", side_effect=outage):
        # The retry waits for its backoff, as in a worker: let run_jobs() reach it.
        (result,) = run_jobs(until=timedelta(minutes=5))

    assert result.status == "SUCCESSFUL"
    assert result.attempts == 2
    assert result.errors[0].exception_class_path == "builtins.ConnectionError"


# [/retries]


# [fixtures]
def test_with_the_fixtures(client, jobs, mailoutbox):
    with jobs.immediate():
        client.post("/accounts/sign-up/", {"email": "cy@example.com"})
    # The job ran inside the request, before enqueue() returned.
    (job,) = jobs.enqueued(send_welcome_email)
    assert job.status == "SUCCESSFUL"
    assert mailoutbox[0].to == ["cy@example.com"]


def test_immediate_for_the_whole_test(client, jobs_immediate, mailoutbox):
    client.post("/accounts/sign-up/", {"email": "di@example.com"})
    assert mailoutbox[0].to == ["di@example.com"]


# [/fixtures]


# [worker]
def test_with_a_real_worker(transactional_db):
    user = get_user_model().objects.create_user("gus", "gus@example.com")
    result = send_welcome_email.enqueue(user.pk)

    call_command("runjobs", "--burst", "--concurrency", "1", "-v", "0")

    result.refresh()
    assert result.status == "SUCCESSFUL"
    assert result.worker_ids[0].startswith(socket.gethostname())


# [/worker]
