"""Parameter draws for ``init_fn`` that compile once per size class.

Called eagerly, ``jax.random.normal(key, shape)`` compiles one XLA program
per shape (0.1-0.2 s each under JAX 0.10 on CPU), and a network's
``init_fn`` draws several shapes: a 3-layer MLP's first ``init_fn`` paid
four such compiles. Under JAX's partitionable threefry (its default since
0.5), entry ``i`` of a draw depends only on the key and on ``i``'s index in
the flattened array, so a draw of ``shape`` holds the same bits as the first
``prod(shape)`` entries of any longer flat draw with that key. ``normal``
draws a power-of-two length and keeps that prefix, reshaped, on the host:
the values users get for a key are unchanged, and the programs are one per
size class (``MIN_DRAW`` entries or a power of two above).

The shortcut applies only where it is exact and free: a concrete key of the
threefry implementation under partitionable threefry, on a single CPU
device (where the host copy costs nothing). Everything else (traced keys
under ``jit`` / ``vmap``, other implementations, accelerators, several
devices) calls ``jax.random.normal`` itself.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .._tracing import is_concrete

__all__ = ["normal", "MIN_DRAW", "MAX_DRAW"]

#: The smallest flat draw. On CPU a shortcut draw of this size costs ~0.15
#: ms against ~0.09 ms at a small shape of its own (2^14: ~0.3 ms); larger
#: minimums make fewer size classes but cost more per draw.
MIN_DRAW = 2**10
#: Above this many entries a draw runs at its own shape (the compile is
#: small next to the draw, and a prefix would waste up to half of it).
MAX_DRAW = 2**24


def normal(key: jax.Array, shape: Sequence[int],
           dtype: Optional[np.dtype] = None) -> jax.Array:
  """Standard normal entries of ``shape``, equal to
  ``jax.random.normal(key, shape, dtype)`` bit for bit.

  Args:
    key: a PRNG key (raw ``uint32[2]`` or typed).
    shape: the output shape.
    dtype: a floating dtype; JAX's default float when ``None``.

  Returns:
    An array of ``shape`` and ``dtype``.
  """
  shape = tuple(int(d) for d in shape)
  args = () if dtype is None else (dtype,)
  n = math.prod(shape)
  if not _prefix_is_exact(key) or not 0 < n <= MAX_DRAW:
    return jax.random.normal(key, shape, *args)
  size = max(MIN_DRAW, 1 << (n - 1).bit_length())
  flat = np.asarray(jax.random.normal(key, (size,), *args))
  return jnp.asarray(flat[:n].reshape(shape))


def _prefix_is_exact(key) -> bool:
  """Whether a flat draw's prefix equals the shaped draw for ``key``, and
  copying it through the host is free."""
  if not (jax.config.jax_threefry_partitionable
          and isinstance(key, jax.Array) and is_concrete(key)):
    return False
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    impl = str(jax.random.key_impl(key))
  else:
    impl = str(jax.config.jax_default_prng_impl)
  if impl != "threefry2x32" or jax.device_count() != 1:
    return False
  return all(d.platform == "cpu" for d in key.devices())
