"""Tasks declared outside ``tasks.py``: no worker imports this package at start."""
