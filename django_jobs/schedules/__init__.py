"""Periodic schedules: cron or interval timing, declared in settings or the admin.

- ``cron``: cron expressions over cronsim (parse, explain, step through fire times);
- ``timing``: when a schedule fires and what happens to missed runs (pure functions);
- ``declared``: schedules declared in ``TASKS[alias]["OPTIONS"]["SCHEDULES"]``;
- ``firing``: enqueue what a due schedule owes, once per fire time; run now, enable.

The tick that fires due schedules is a service (``services/scheduler.py``); the admin's
pages are ``admin/schedules.py``.
"""
