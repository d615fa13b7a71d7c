"""The test project as a new project runs it: no LOGGING setting at all.

For the test of runjobs' default output (tests/process/test_first_hour.py).
"""

from testproject.settings import *  # noqa: F403

del LOGGING  # noqa: F821
