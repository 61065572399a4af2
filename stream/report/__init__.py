"""The HTML drift report (``streamdrift report``): one self-contained page from window statistic records."""
