"""Monte Carlo estimates of the NNGP and NTK: `monte_carlo_kernel_fn`.

``K_MC(x1, x2) = (1/n) sum_s K_emp(x1, x2; params_s)`` over ``n`` random
initializations ``params_s = init_fn(key_s, x1.shape)`` of a finite network,
where ``K_emp`` is `empirical_kernel_fn` (NNGP ``f f^T`` and/or NTK
``J J^T``). This converges to the infinite-width kernel as the width grows, so
it is the golden check of the analytic ``kernel_fn``s.

Speed: samples are drawn in chunks; each chunk is one jitted, vmapped call
(``init_fn`` + kernel for ``B`` keys, summed on device), so there is one
compilation and no Python loop over individual samples. ``B`` is chosen from
XLA's memory estimate of the compiled chunk. ``get='nngp'`` never computes
Jacobians.

Keys are drawn exactly as neural-tangents does (``key, k_s = split(key)`` per
sample, then ``init_key, dropout_key = split(k_s)``), so with the same key the
estimates agree with neural-tangents' to float32 round-off.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import tree_map

from .empirical import _common
from .empirical._common import (DEFAULT_NTK_IMPLEMENTATION, NtkImplementation,
                                DEFAULT_NTK_FWD, DEFAULT_NTK_J_RULES,
                                DEFAULT_NTK_S_RULES)
from .empirical.kernel import (KINDS, assemble, empirical_nngp_fn,
                               empirical_ntk_fn)
from .kernel import canonical_get

__all__ = ["monte_carlo_kernel_fn"]

# Temporary memory allowed for one vmapped chunk of samples, and the largest
# chunk tried first.
_CHUNK_MEMORY_BYTES = 1 << 30
_MAX_CHUNK = 32


def _canonical_n_samples(n_samples) -> tuple[list[int], bool]:
  """Sorted sample counts and whether a generator is returned."""
  if isinstance(n_samples, (int, np.integer)) and not isinstance(
      n_samples, bool):
    counts, generator = [int(n_samples)], False
  elif hasattr(n_samples, "__iter__"):
    counts, generator = list(n_samples), True
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool)
               for n in counts):
      raise ValueError(f"`n_samples` must contain only integers, got "
                       f"{counts}.")
  else:
    raise TypeError(f"`n_samples` must be an integer or an iterable of "
                    f"integers, got {type(n_samples).__name__}.")
  if not counts or any(n <= 0 for n in counts):
    raise ValueError(f"`n_samples` must be positive, got {n_samples}.")
  return sorted(set(int(n) for n in counts)), generator


def _keys(key, n: int) -> jax.Array:
  """The ``n`` per-sample keys, in neural-tangents' order."""
  def step(k, _):
    k, s = jax.random.split(k)
    return k, s
  return jax.lax.scan(step, key, None, length=n)[1]


_keys = jax.jit(_keys, static_argnums=1)


def monte_carlo_kernel_fn(
    init_fn: Callable,
    apply_fn: Callable,
    key: jax.Array,
    n_samples: Union[int, Iterable[int]],
    batch_size: int = 0,
    device_count: int = -1,
    store_on_device: bool = True,
    trace_axes=(-1,),
    diagonal_axes=(),
    vmap_axes=None,
    implementation: Union[int, NtkImplementation] = DEFAULT_NTK_IMPLEMENTATION,
    _j_rules: bool = DEFAULT_NTK_J_RULES,
    _s_rules: bool = DEFAULT_NTK_S_RULES,
    _fwd: Optional[bool] = DEFAULT_NTK_FWD,
) -> Callable:
  """Monte Carlo sampler of the NNGP and NTK of a finite network.

  Args:
    init_fn: ``init_fn(key, input_shape) -> (output_shape, params)``.
    apply_fn: ``apply_fn(params, x, **kwargs)``; it is called with
      ``rng=`` a per-sample key (for dropout), as in neural-tangents.
    key: PRNG key for the random initializations.
    n_samples: number of networks, or an iterable of counts: the returned
      function then yields the estimate after each count (in increasing
      order).
    batch_size: compute the kernel in blocks of ``x1``/``x2`` of this size
      (``0``: all at once); must divide ``x1.shape[0]`` and ``x2.shape[0]``.
    device_count: accepted for compatibility: the estimate runs on the
      default device, which is what ``-1``, ``0`` and ``1`` mean on a
      single-device host; a larger count warns (UserWarning).
    store_on_device: accepted for compatibility: the estimate stays on the
      device; ``False`` warns (UserWarning).
    trace_axes, diagonal_axes, vmap_axes, implementation, _j_rules, _s_rules,
      _fwd: as `empirical_kernel_fn`.

  Returns:
    ``kernel_fn(x1, x2=None, get=None, **kwargs)``: the estimate (``get`` a
    name: an array per output leaf; a tuple: a ``MonteCarloKernel``
    namedtuple; ``None``: an ``EmpiricalKernel`` of ``nngp`` and ``ntk``), or
    a generator of estimates when ``n_samples`` is an iterable.
  """
  counts, generator = _canonical_n_samples(n_samples)
  _common.canonical_implementation(implementation)
  if device_count not in (-1, 0, 1):
    warnings.warn(f"monte_carlo_kernel_fn: `device_count={device_count}` is "
                  f"not used; the samples run on the default device.",
                  UserWarning, stacklevel=2)
  if not store_on_device:
    warnings.warn("monte_carlo_kernel_fn: `store_on_device=False` is not "
                  "used; the estimate stays on the device.", UserWarning,
                  stacklevel=2)
  fns = {
      "nngp": empirical_nngp_fn(apply_fn, trace_axes, diagonal_axes),
      "ntk": empirical_ntk_fn(apply_fn, trace_axes, diagonal_axes, vmap_axes,
                              implementation, _j_rules, _s_rules, _fwd),
  }
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 0:
    raise ValueError(f"`batch_size` must be a non-negative int, got "
                     f"{batch_size!r}.")

  def one_sample(sample_key, x1, x2, names, kwargs):
    init_key, dropout_key = jax.random.split(sample_key)
    _, params = init_fn(init_key, tree_map(jnp.shape, x1))
    return {g: fns[g](x1, x2, params, rng=dropout_key, **kwargs)
            for g in names}

  def chunk_sum(keys, weights, x1, x2, array_kwargs, names, static_kwargs):
    kwargs = dict(array_kwargs, **dict(static_kwargs))
    samples = jax.vmap(lambda k: one_sample(k, x1, x2, names, kwargs))(keys)
    return tree_map(lambda s: jnp.tensordot(weights.astype(s.dtype), s, 1),
                    samples)

  chunk_sum_jit = jax.jit(chunk_sum, static_argnums=(5, 6))

  def compiled_chunk(x1, x2, names, kwargs, n_max):
    """A compiled chunk function and its chunk size (memory-bounded)."""
    size = min(n_max, _MAX_CHUNK)
    while True:
      keys = _keys(key, size)
      weights = jnp.ones((size,), jnp.float32)
      compiled = chunk_sum_jit.lower(keys, weights, x1, x2, kwargs[0], names,
                                     kwargs[1]).compile()
      mem = _temp_bytes(compiled)
      if size == 1 or mem is None or mem <= _CHUNK_MEMORY_BYTES:
        return compiled, size
      size = max(1, int(size * _CHUNK_MEMORY_BYTES / mem))

  def estimates(x1, x2, names, kwargs):
    """Yields ``(n, mean over the first n samples)`` for n in counts."""
    n_max = counts[-1]
    all_keys = _keys(key, n_max)
    compiled, size = compiled_chunk(x1, x2, names, kwargs, n_max)
    total, done = None, 0
    for n in counts:
      while done < n:
        take = min(size, n - done)
        keys = all_keys[done:done + take]
        weights = jnp.ones((take,), jnp.float32)
        if take < size:  # pad to the compiled chunk size with zero weight
          keys = jnp.concatenate([keys, all_keys[:size - take]])
          # float32 as compiled: a default-dtype pad is float64 under x64.
          weights = jnp.concatenate(
              [weights, jnp.zeros((size - take,), jnp.float32)])
        part = compiled(keys, weights, x1, x2, kwargs[0])
        total = part if total is None else tree_map(jnp.add, total, part)
        done += take
      yield n, tree_map(lambda t, n=n: t / n, total)

  def blocked(x1, x2, names, kwargs):
    """``estimates`` over blocks of ``batch_size`` samples of x1 and x2."""
    if batch_size == 0:
      yield from estimates(x1, x2, names, kwargs)
      return
    _check_blocks(x1, x2, batch_size, trace_axes, diagonal_axes)
    xb1 = _split(x1, batch_size)
    same = _common.all_none(x2)
    xb2 = xb1 if same else _split(x2, batch_size)
    gens = [[estimates(a, None if (same and i == j) else b, names,
                       _block_kwargs(kwargs, i, j, batch_size))
             for j, b in enumerate(xb2)]
            for i, a in enumerate(xb1)]
    for n in counts:
      rows = []
      for row in gens:
        blocks = [next(g)[1] for g in row]
        rows.append(tree_map(lambda *b: jnp.concatenate(b, axis=1), *blocks))
      yield n, tree_map(lambda *r: jnp.concatenate(r, axis=0), *rows)

  def kernel_fn(x1, x2=None, get=None, **kwargs):
    names, single = canonical_get(get, KINDS, default=KINDS,
                                  none_means=str(KINDS))
    kwargs = _split_static(kwargs)
    name = "EmpiricalKernel" if get is None else "MonteCarloKernel"
    gen = ((n, assemble(k, names, single, name))
           for n, k in blocked(x1, x2, names, kwargs))
    if generator:
      return (k for _, k in gen)
    for _, k in gen:
      pass
    return k

  return kernel_fn


def _split_static(kwargs: dict) -> tuple[dict, tuple]:
  """(array kwargs, hashable items of the other kwargs) for jit."""
  arrays, static = {}, []
  for k, v in kwargs.items():
    leaves = jax.tree_util.tree_leaves(v)
    if leaves and all(isinstance(l, (jax.Array, np.ndarray)) for l in leaves):
      arrays[k] = v
    else:
      static.append((k, v))
  return arrays, tuple(sorted(static))


def _block_kwargs(kwargs: tuple, i: int, j: int, size: int) -> tuple:
  """The keyword arguments of block ``(i, j)``: a per-input pair ``(a, b)``
  (e.g. a graph ``pattern``) gives rows ``i`` of ``a`` and rows ``j`` of
  ``b``, as its first axis runs along the samples of ``x1`` and ``x2``."""
  arrays, static = kwargs

  def rows(t, k):
    if t is None:
      return None
    return tree_map(lambda l: l[k * size:(k + 1) * size], t)

  out = {}
  for name, v in arrays.items():
    if isinstance(v, tuple) and len(v) == 2:
      out[name] = (rows(v[0], i), rows(v[1], j))
    else:
      out[name] = v
  return out, static


def _temp_bytes(compiled) -> Optional[int]:
  try:
    return int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # noqa: BLE001 -- not every backend reports it
    return None


def _split(x, size: int) -> list:
  n = jax.tree_util.tree_leaves(x)[0].shape[0]
  return [tree_map(lambda a, i=i: a[i:i + size], x)
          for i in range(0, n, size)]


def _check_blocks(x1, x2, batch_size, trace_axes, diagonal_axes) -> None:
  for x in (x1, x2):
    if _common.all_none(x):
      continue
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    if n % batch_size:
      raise ValueError(f"`batch_size` {batch_size} must divide the number of "
                       f"inputs {n}.")
  axes = [a for a in tuple(np.atleast_1d(trace_axes)) +
          tuple(np.atleast_1d(diagonal_axes))]
  if any(a == 0 for a in axes):
    raise ValueError("`batch_size` > 0 needs the batch axis 0 outside "
                     "trace_axes and diagonal_axes.")
