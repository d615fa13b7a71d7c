# With Django's TestCase: the same helpers, inside the test's transaction.
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import TestCase

from django_jobs.testing import assert_enqueued, immediate, run_jobs

from ..tasks import send_welcome_email


# [testcase]
class SignUpTests(TestCase):
    def test_sign_up_sends_a_welcome_email(self):
        self.client.post("/accounts/sign-up/", {"email": "eve@example.com"})
        user = get_user_model().objects.get(email="eve@example.com")
        assert_enqueued(send_welcome_email, args=[user.pk], count=1)

        run_jobs()

        self.assertEqual(mail.outbox[0].to, ["eve@example.com"])

    @immediate()
    def test_jobs_run_at_once_under_immediate(self):
        self.client.post("/accounts/sign-up/", {"email": "fay@example.com"})
        self.assertEqual(len(mail.outbox), 1)


# [/testcase]
