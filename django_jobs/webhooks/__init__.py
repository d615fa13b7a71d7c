"""Webhooks: POST a finished job's outcome to the URL it named, signed, retried.

- ``signing``: the signature headers, as the Standard Webhooks specification has them
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``: HMAC-SHA256 of
  ``id.timestamp.body``), so receivers can verify with that specification's libraries
  in any language, or with a few lines of their own;
- ``delivery``: the task that POSTs one payload (a job of its own, retried with backoff).

The delivery job is enqueued by the statement that records the outcome
(``protocol/webhooks.py``), never by the worker afterwards.
"""
