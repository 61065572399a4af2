"""The demo: ``streamdrift demo`` on the embedded broker (tansu, from the ``demo`` extra), the synthetic
drifting stream and ``streamdrift example-data``."""
