"""Workflows: chain, group, chord and map, written in one transaction.

- ``canvas``: the building blocks (signatures, chain, group, chord), Celery's names;
- ``plan``: turning a canvas into steps and edges, checking it, and writing it;
- ``results``: ``WorkflowResult`` and ``get_workflow()``, read from the steps' rows;
- ``inputs``: what a step receives from its parents when it starts (read by reference).

The statements live in ``protocol/workflows.py``; this package writes none itself.
"""
