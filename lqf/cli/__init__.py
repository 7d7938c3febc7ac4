"""The ``lqf`` command line."""
