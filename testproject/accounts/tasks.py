from django.contrib.auth import get_user_model
from django.core.mail import send_mail

from django_jobs import job


@job(queue_name="emails", max_attempts=3)
def send_welcome_email(user_id: int) -> int:
    user = get_user_model().objects.get(pk=user_id)
    return send_mail("Welcome", "Thanks for signing up.", None, [user.email])
