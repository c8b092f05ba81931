"""Counting XLA compilations in a test (through `jax.monitoring`)."""
import contextlib

import jax


@contextlib.contextmanager
def count_compiles():
  """Yields a list that collects one entry per backend compile inside: the
  compiled function's name (JAX's ``fun_name``; the event's name if
  absent)."""
  seen = []

  def listener(event, duration, **kwargs):
    if "backend_compile" in event:
      seen.append(str(kwargs.get("fun_name", event)))

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
