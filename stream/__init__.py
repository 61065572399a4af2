"""streamdrift's Kafka consumer service: settings, decoding, windows, evaluation, alerts,
metrics, checkpoints and the ``streamdrift`` command line."""

__version__ = "0.1.0"
