"""A sign-up with a welcome email: the example the "Testing your jobs" page runs."""
