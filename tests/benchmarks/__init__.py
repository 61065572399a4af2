"""The performance benchmark (``make bench``); not collected by pytest (see conftest.py)."""
