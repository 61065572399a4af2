"""The ``serve`` service: one active Kafka consumer per monitor, its windows, state store and connection checks.

See docs/architecture.md for the layers and the order of state, offsets and outputs.
"""
