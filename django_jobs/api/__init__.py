"""The HTTP API: enqueue, read and cancel jobs from any language.

Include its URLconf: ``path("jobs-api/", include("django_jobs.api.urls"))``.

- ``auth``: API tokens (``models.ApiToken``: hashed at rest, scoped to tasks and to
  read / enqueue / cancel / metrics) or a logged-in user's session with permissions;
- ``views``: the endpoints; every error is JSON ``{"error": {"code", "message"}}``;
- ``serialize``: jobs as JSON (arguments redacted as in the admin);
- ``openapi.json``: the description of it all, served at ``openapi.json``.

Enqueueing goes through the task's backend (``Task.enqueue``: the protocol's INSERT in a
transaction), cancelling through ``console/operations.py``, like the admin's actions.
"""
