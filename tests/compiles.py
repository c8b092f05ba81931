"""Counting XLA compilations in a test (through `jax.monitoring`)."""
import contextlib

import jax


@contextlib.contextmanager
def count_compiles():
  """Yields a list that collects one entry per backend compile inside."""
  seen = []

  def listener(event, duration, **kwargs):
    if "backend_compile" in event:
      seen.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
