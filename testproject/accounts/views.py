from django.contrib.auth import get_user_model
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from .tasks import send_welcome_email


def sign_up(request: HttpRequest) -> HttpResponse:
    email = request.POST.get("email", "")
    if "@" not in email:
        return HttpResponseBadRequest("An email address, please.")
    with transaction.atomic():
        user = get_user_model().objects.create_user(username=email, email=email)
        send_welcome_email.enqueue(user.pk)
    return HttpResponse(status=201)
