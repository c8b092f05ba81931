"""`MaxPool`: max over spatial windows of Gaussian pre-activations.

Placed right after an affine layer (``Conv``/``Dense``), its inputs ``z`` are
a Gaussian process over (sample, position) with the incoming covariances. For
output windows ``W_p`` of sample ``i`` and ``W_q`` of sample ``j``, the
``2w`` values ``(z_i[W_p], z_j[W_q])`` (``w`` the window size) are jointly
Gaussian with covariance ``[[K_ii[W_p, W_p], K_ij[W_p, W_q]], [K_ji[W_q, W_p],
K_jj[W_q, W_q]]]``, and

  ``nngp'[i, j, p, q] = E[max z_i[W_p] * max z_j[W_q]]``,
  ``ntk'[i, j, p, q] = sum_{a, b} P(argmax_p = a, argmax_q = b)
  ntk[i, j, W_p[a], W_q[b]]``

(the max passes the gradient of its argmax). There is no closed form for
``w > 2``; both expectations are estimated from ``n_samples`` draws of that
``2w``-dimensional Gaussian only, using the SAME standard-normal draws
(seeded by ``seed``, antithetic pairs) for every entry: deterministic for a
given seed, smooth in the covariances, and the standard error is about
``std(max * max) / sqrt(n_samples)`` — ~1-2% of the kernel's scale for the
default 4096 draws. Raise ``n_samples`` for more accuracy (cost is linear).

``max(relu(z)) = relu(max(z))``: a CNN's ``Relu -> MaxPool`` equals
``MaxPool -> Relu`` for finite networks, but the kernel is only available for
``MaxPool`` on Gaussian inputs (pass a monotone ``fn`` to get the kernel of
``fn(max z)``, e.g. ``fn=jax.nn.relu`` for ``Conv -> Relu -> MaxPool``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..axes import spatial_axes
from ..kernel import Kernel
from . import stencil
from .pooling import window_geometry
from .layer import Requirements, layer
from .activations.base import check_callable, require_gaussian


def window_indices(windows: Sequence[stencil.Window]):
  """``(idx, valid)``, both ``(P, w)``: flat input positions read by each
  flat output position (row-major over the spatial axes) and whether the
  position is inside the input (not padding)."""
  idx = np.zeros((1, 1), np.int64)
  valid = np.ones((1, 1), bool)
  for win in windows:
    o = np.arange(win.raw_out)[:, None] * win.stride
    pos = o + np.arange(win.size)[None, :] - win.pad[0]
    if win.circular:
      ok = np.ones_like(pos, bool)
      pos = pos % win.n
    else:
      ok = (pos >= 0) & (pos < win.n)
      pos = np.clip(pos, 0, win.n - 1)
    # Outer product with the axes so far: (P, w) x (p, f) -> (P p, w f).
    idx = (idx[:, None, :, None] * win.n + pos[None, :, None, :])
    valid = valid[:, None, :, None] & ok[None, :, None, :]
    idx = idx.reshape(idx.shape[0] * idx.shape[1], -1)
    valid = valid.reshape(idx.shape)
  return idx, valid


def _unzip(mat, batch_ndim: int):
  """``(B.., X, X', Y, Y')`` -> ``(B.., X Y, X' Y')``."""
  n = (mat.ndim - batch_ndim) // 2
  perm = (list(range(batch_ndim)) +
          [batch_ndim + 2 * a for a in range(n)] +
          [batch_ndim + 2 * a + 1 for a in range(n)])
  mat = jnp.transpose(mat, perm)
  size = int(np.prod(mat.shape[batch_ndim:batch_ndim + n]))
  return mat.reshape(mat.shape[:batch_ndim] + (size, -1))


def _zip(mat, batch_ndim: int, out_spatial: Sequence[int]):
  """Inverse of `_unzip` for output spatial shape ``out_spatial``."""
  n = len(out_spatial)
  mat = mat.reshape(mat.shape[:batch_ndim] + tuple(out_spatial) * 2)
  perm = list(range(batch_ndim))
  for a in range(n):
    perm += [batch_ndim + a, batch_ndim + n + a]
  return jnp.transpose(mat, perm)


def _window_blocks(mat, idx):
  """``mat[.., W_p, W_q]``: ``(.., S, S)`` -> ``(.., P, P, w, w)``."""
  i = idx[:, None, :, None]
  j = idx[None, :, None, :]
  return mat[..., i, j]


def _self_blocks(self_cov, idx):
  """``self_cov[n, W_p, W_p]``: ``(n, S, S)`` -> ``(n, P, w, w)``."""
  return self_cov[:, idx[:, :, None], idx[:, None, :]]


def max_expectations(a, b, cross, ntk_cross, valid, eps,
                     fn: Optional[Callable], chunk: int):
  """Monte-Carlo expectations of window maxima.

  Args:
    a, b: the within-sample blocks ``K_ii[W_p, W_p]``, ``K_jj[W_q, W_q]``,
      broadcastable to ``cross``.
    cross: ``(..., P, Q, w, w)``, the blocks ``K_ij[W_p, W_q]``.
    ntk_cross: like ``cross`` or ``None``.
    valid: ``(P, w)`` non-padding mask (the same windows for both sides).
    eps: ``(M, 2 w)`` standard-normal draws shared by every entry.
    fn: optional monotone function applied to the maxima.

  Returns:
    ``(nngp, ntk)`` of shape ``cross.shape[:-2]`` (``ntk`` may be ``None``).
  """
  shape = cross.shape[:-2]
  p, q, w = cross.shape[-4], cross.shape[-3], cross.shape[-1]
  a = jnp.broadcast_to(a, cross.shape)
  b = jnp.broadcast_to(b, cross.shape)
  top = jnp.concatenate([a, cross], -1)
  bottom = jnp.concatenate([jnp.swapaxes(cross, -1, -2), b], -1)
  sigma = jnp.concatenate([top, bottom], -2).reshape(-1, 2 * w, 2 * w)
  pair_valid = jnp.concatenate(
      [jnp.broadcast_to(valid[:, None, :], (p, q, w)),
       jnp.broadcast_to(valid[None, :, :], (p, q, w))], -1)
  v = jnp.broadcast_to(pair_valid, shape + (2 * w,)).reshape(-1, 2 * w)
  # Padding positions: no variance, and excluded from the max.
  sigma = sigma * (v[:, :, None] & v[:, None, :])
  neg = jnp.asarray(-jnp.inf, sigma.dtype)
  with_ntk = ntk_cross is not None
  theta = (ntk_cross.reshape(-1, w, w) if with_ntk
           else jnp.zeros((sigma.shape[0], 1, 1), sigma.dtype))

  def one(args):
    s, vv, th = args
    lam, vec = jnp.linalg.eigh(s)
    root = vec * jnp.sqrt(jnp.maximum(lam, 0.0))[None, :]
    z = jnp.where(vv[None], eps @ root.T, neg)  # (M, 2w) window values
    z1, z2 = z[:, :w], z[:, w:]
    m1, m2 = jnp.max(z1, -1), jnp.max(z2, -1)
    if fn is None:
      nngp = jnp.mean(m1 * m2)
    else:
      nngp = jnp.mean(fn(m1) * fn(m2))
    if not with_ntk:
      return nngp, jnp.zeros((), s.dtype)
    h1 = jax.nn.one_hot(jnp.argmax(z1, -1), w, dtype=s.dtype)
    h2 = jax.nn.one_hot(jnp.argmax(z2, -1), w, dtype=s.dtype)
    if fn is not None:  # chain rule through fn at the max
      h1 = h1 * jax.jvp(fn, (m1,), (jnp.ones_like(m1),))[1][:, None]
      h2 = h2 * jax.jvp(fn, (m2,), (jnp.ones_like(m2),))[1][:, None]
    return nngp, jnp.sum((h1.T @ h2) * th) / eps.shape[0]

  nngp, ntk = lax.map(one, (sigma, v, theta), batch_size=chunk)
  return nngp.reshape(shape), ntk.reshape(shape) if with_ntk else None


@layer
def MaxPool(window_shape: Sequence[int],
            strides: Optional[Sequence[int]] = None, padding: str = "VALID",
            batch_axis: int = 0, channel_axis: int = -1,
            n_samples: int = 4096, seed: int = 0,
            fn: Optional[Callable] = None):
  """Max pooling over windows of the spatial axes (Gaussian inputs only).

  Args:
    window_shape, strides, padding, batch_axis, channel_axis: as `AvgPool`
      (``'SAME'`` pads with ``-inf``: padding never wins the max).
    n_samples: draws of each window pair's Gaussian for the kernel (rounded
      up to even: antithetic pairs). Standard error ~ ``1 / sqrt(n_samples)``
      relative to the kernel's scale.
    seed: seed of those draws (the kernel is deterministic given it).
    fn: optional monotone elementwise function applied after the max (the
      kernel of ``fn(max z) = max fn(z)``), e.g. `jax.nn.relu`.

  Kernel: see the module docstring. Needs covariances between all pairs of
  spatial positions (``diagonal_spatial=False``) and full pairs of samples
  (x2=None is not packed).
  """
  name = "MaxPool"
  check_callable(name, "fn", fn, optional=True)
  window_shape, strides, pad, windows_for, init_fn = window_geometry(
      name, window_shape, strides, padding, batch_axis, channel_axis)
  if n_samples < 2:
    raise ValueError(f"{name}: n_samples must be >= 2; got {n_samples}.")
  half = -(-int(n_samples) // 2)
  act = (lambda x: x) if fn is None else fn

  def apply_fn(params, inputs, **kwargs):
    axes = spatial_axes(inputs.ndim, batch_axis, channel_axis)
    windows = windows_for(tuple(inputs.shape[a] for a in axes))
    dims, steps = [1] * inputs.ndim, [1] * inputs.ndim
    x = inputs
    for a, w in zip(axes, windows):
      if w.circular:
        x = stencil.pad_axes(x, (a,), w)
      else:
        cfg = [(0, 0, 0)] * x.ndim
        cfg[a] = (w.pad[0], w.pad[1], 0)
        x = lax.pad(x, jnp.asarray(-jnp.inf, x.dtype), cfg)
      dims[a], steps[a] = w.size, w.stride
    out = lax.reduce_window(x, -jnp.inf, lax.max, dims,
                            steps, "VALID")
    return act(out)

  def rule(k: Kernel, **kwargs) -> Kernel:
    require_gaussian(name, k)
    if k.packed or k.diagonal_spatial:
      raise ValueError(f"{name}: needs full (unpacked, spatially "
                       f"non-diagonal) covariances; got nngp shape "
                       f"{tuple(k.nngp.shape)}.")
    spatial = k.nngp.shape[2::2]
    windows = windows_for(tuple(spatial))
    idx, valid = window_indices(windows)
    out_spatial = tuple(w.raw_out for w in windows)
    w = idx.shape[1]
    dtype = k.nngp.dtype
    key = jax.random.PRNGKey(seed)
    e = jax.random.normal(key, (half, 2 * w), dtype)
    eps = jnp.concatenate([e, -e], 0)
    valid_j = jnp.asarray(valid)
    chunk = max(1, min(256, 2**22 // (eps.shape[0] * 2 * w)))

    def selves(cov):
      flat = _unzip(cov, k.cov_batch_ndim)
      if not k.diagonal_batch:
        flat = jnp.moveaxis(jnp.diagonal(flat, axis1=0, axis2=1), -1, 0)
      return _self_blocks(flat, idx)

    self1 = selves(k.cov1)
    self2 = self1 if k.cov2 is None else selves(k.cov2)

    def blocks(mat, batch_ndim):
      return None if mat is None else _window_blocks(
          _unzip(mat, batch_ndim), idx)

    def full_pair(mat, s1, s2, ntk_mat):
      # (N1, N2, P, Q): sample i of the first, j of the second kind.
      nngp, ntk = max_expectations(
          s1[:, None, :, None], s2[None, :, None, :], blocks(mat, 2),
          blocks(ntk_mat, 2), valid_j, eps, fn, chunk)
      zipped = lambda m: None if m is None else _zip(m, 2, out_spatial)
      return zipped(nngp), zipped(ntk)

    ntk = k.ntk
    if ntk is not None:
      ntk = jnp.broadcast_to(ntk, k.nngp.shape)
    nngp, ntk = full_pair(k.nngp, self1, self2, ntk)

    def cov_rule(cov, selfs):
      if not k.diagonal_batch:
        return full_pair(cov, selfs, selfs, None)[0]
      # Sample-diagonal: sample i with itself.
      out, _ = max_expectations(selfs[:, :, None], selfs[:, None, :],
                                blocks(cov, 1), None, valid_j, eps, fn, chunk)
      return _zip(out, 1, out_spatial)

    cov1 = cov_rule(k.cov1, self1)
    cov2 = None if k.cov2 is None else cov_rule(k.cov2, self2)
    return k.replace(nngp=nngp, ntk=ntk, cov1=cov1, cov2=cov2,
                     is_gaussian=False)

  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=False, packable=False, blocker=name,
      batch_axis=batch_axis, channel_axis=channel_axis)
