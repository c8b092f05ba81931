"""`GlobalSelfAttention` (Hron et al. 2020, "Infinite attention"), with the
enums `AttentionMechanism` and `PositionalEmbedding`.

Finite layer (per head ``h``; ``x`` of ``C`` channels at ``S`` positions)::

  G_h = phi(QK_std * (x K_h)(x Q_h)^T / (C * d_k**p)),  p = 1 (linear) or 1/2
  f(x) = concat_h[G_h x V_h] W_out * OV_std / sqrt(d_v H C) + b_std * b

With ``linear_scaling=True`` the queries are tied to the keys and ``G``
converges to ``phi(QK_std * K[x, x'])``, a deterministic function of the input
covariance, so (masked keys removed, softmax over the key positions ``x'``)::

  nngp'[i, j, x, y] = OV_std**2 sum_{x', y'} G_i[x, x'] nngp[i, j, x', y']
                      G_j[y, y'] + b_std**2
  ntk' = (same contraction of ntk) + 2 (nngp' - b_std**2).

``linear_scaling=False`` has a closed form only for ``IDENTITY``.
Positional embeddings interpolate the input covariance with the embeddings'
own covariance ``R`` (one-hot: ``R = [x == x']``; or
``pos_emb_decay_fn(sum_d |x_d - x'_d|**p)``).
"""
from __future__ import annotations

import enum
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..axes import spatial_axes
from ..kernel import Kernel
from . import draws, masking
from .dense import affine
from .layer import Requirements, layer
from .sharing import hyperparameters

__all__ = ["AttentionMechanism", "PositionalEmbedding", "GlobalSelfAttention"]

_NEG_INF = -1e20  # finite, so a fully masked row still has a softmax


class AttentionMechanism(enum.Enum):
  """Nonlinearity applied to the key-query products."""
  SOFTMAX = "SOFTMAX"
  IDENTITY = "IDENTITY"
  ABS = "ABS"
  RELU = "RELU"

  def fn(self) -> Callable:
    return {"SOFTMAX": jax.nn.softmax, "IDENTITY": lambda x: x,
            "ABS": jnp.abs, "RELU": lambda x: jnp.maximum(x, 0.0)}[self.name]


class PositionalEmbedding(enum.Enum):
  """Positional embeddings: none, added to, or concatenated with the inputs."""
  NONE = "NONE"
  SUM = "SUM"
  CONCAT = "CONCAT"


def _pos_emb_cov(spatial_shape, p_norm, decay_fn) -> np.ndarray:
  """``R[x, x', y, y', ..]``: covariance of the positional embeddings."""
  n = len(spatial_shape)
  if decay_fn is None:
    r = np.ones((1,) * (2 * n))
    for a, s in enumerate(spatial_shape):
      r = r * np.eye(s).reshape((1,) * (2 * a) + (s, s) +
                                (1,) * (2 * (n - a - 1)))
    return r
  r = np.zeros((1,) * (2 * n))
  for a, s in enumerate(spatial_shape):
    d = np.arange(s)
    dist = np.abs(d[:, None] - d[None, :])**p_norm
    r = r + dist.reshape((1,) * (2 * a) + (s, s) + (1,) * (2 * (n - a - 1)))
  with jax.ensure_compile_time_eval():  # a constant, even under jit
    return np.asarray(decay_fn(jnp.asarray(r)))


def _unzip(r):
  """``(x, x', y, y')`` -> ``(x, y, x', y')``."""
  n = r.ndim // 2
  return np.transpose(r, list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2)))


@hyperparameters("W_key_std", "W_value_std", "W_query_std", "W_out_std",
                 "b_std", "W_pos_emb_std")
@layer
def GlobalSelfAttention(n_chan_out: int, n_chan_key: int, n_chan_val: int,
                        n_heads: int, linear_scaling: bool = True,
                        W_key_std: float = 1.0, W_value_std: float = 1.0,
                        W_query_std: float = 1.0, W_out_std: float = 1.0,
                        b_std: Optional[float] = None,
                        attention_mechanism: str = "SOFTMAX",
                        pos_emb_type: str = "NONE",
                        pos_emb_p_norm: float = 2,
                        pos_emb_decay_fn: Optional[Callable] = None,
                        n_chan_pos_emb: Optional[int] = None,
                        W_pos_emb_std: float = 1.0, val_pos_emb: bool = False,
                        batch_axis: int = 0, channel_axis: int = -1):
  """Global scaled dot-product self-attention over all spatial positions.

  Args (as in neural-tangents):
    n_chan_out, n_chan_key, n_chan_val, n_heads: widths.
    linear_scaling: scale key-query products by ``1 / d_k`` and tie queries
      to keys (closed-form kernel for every mechanism); else ``1 /
      sqrt(d_k)`` (closed form for ``IDENTITY`` only).
    W_key_std, W_value_std, W_query_std, W_out_std, b_std: scales.
    attention_mechanism: ``'SOFTMAX'``, ``'IDENTITY'``, ``'ABS'``, ``'RELU'``.
    pos_emb_type: ``'NONE'``, ``'SUM'`` or ``'CONCAT'``.
    pos_emb_p_norm, pos_emb_decay_fn: embeddings correlated as
      ``decay_fn(sum |x - x'|**p)`` (``None``: independent per position).
    n_chan_pos_emb: channels of the embeddings (``CONCAT``).
    W_pos_emb_std: embedding scale.
    val_pos_emb: also feed embeddings to the values.
    batch_axis, channel_axis: axes of the inputs.

  Params: ``(Q, K, V, W_out, b, pos_emb)`` with ``Q = None`` under linear
  scaling. Kernel: see the module docstring.
  """
  # Products taken where used, not here: see `activations.base`,
  # "Hyperparameters" (equal layers must stay equal under `sharing`).
  qk_std = lambda: W_query_std * W_key_std
  ov_std = lambda: W_out_std * W_value_std
  pos_emb_type = PositionalEmbedding(
      pos_emb_type.name if isinstance(pos_emb_type, enum.Enum)
      else pos_emb_type)
  mech = AttentionMechanism(
      attention_mechanism.name if isinstance(attention_mechanism, enum.Enum)
      else attention_mechanism)
  name = "GlobalSelfAttention"

  def init_fn(rng, input_shape):
    input_shape = tuple(input_shape)
    ca = channel_axis % len(input_shape)
    out_shape = input_shape[:ca] + (n_chan_out,) + input_shape[ca + 1:]
    r_q, r_k, r_v, r_o, r_b, r_pe = jax.random.split(rng, 6)
    n_keys = n_vals = input_shape[ca]
    pos_emb = None
    if pos_emb_type != PositionalEmbedding.NONE:
      n_pe = n_keys if n_chan_pos_emb is None else n_chan_pos_emb
      pe_shape = list(input_shape)
      pe_shape[ca] = n_pe
      pe_shape[batch_axis] = 1
      pos_emb = draws.normal(r_pe, tuple(pe_shape))
      if pos_emb_type == PositionalEmbedding.CONCAT:
        n_keys += n_pe
        if val_pos_emb:
          n_vals += n_pe
    K = draws.normal(r_k, (n_heads, n_keys, n_chan_key))
    V = draws.normal(r_v, (n_heads, n_vals, n_chan_val))
    W_out = draws.normal(r_o, (n_chan_val * n_heads, n_chan_out))
    b = None
    if b_std is not None:
      b_shape = [1] * len(input_shape)
      b_shape[ca] = n_chan_out
      b = draws.normal(r_b, tuple(b_shape))
    Q = None if linear_scaling else draws.normal(
        r_q, (n_heads, n_keys, n_chan_key))
    return out_shape, (Q, K, V, W_out, b, pos_emb)

  def apply_fn(params, inputs, mask=None, **kwargs):
    Q, K, V, W_out, b, pos_emb = params
    spatial_shape = tuple(inputs.shape[i] for i in spatial_axes(
        inputs.ndim, batch_axis, channel_axis))
    n = inputs.shape[batch_axis]
    ca = channel_axis % inputs.ndim
    values_in = inputs
    if pos_emb is not None:
      if pos_emb_decay_fn is not None:
        # Correlated embeddings: L e with L L^T = R.
        size = int(np.prod(spatial_shape))
        r = _unzip(_pos_emb_cov(spatial_shape, pos_emb_p_norm,
                                pos_emb_decay_fn)).reshape(size, size)
        chol = jnp.asarray(np.linalg.cholesky(r), pos_emb.dtype)
        pe = jnp.moveaxis(pos_emb, (batch_axis, ca), (0, -1))
        pe = (chol @ pe.reshape(size, -1)).reshape(pe.shape)
        pos_emb = jnp.moveaxis(pe, (0, -1), (batch_axis, ca))
      if mask is not None:
        pos_emb = jnp.where(mask, jnp.zeros((), pos_emb.dtype), pos_emb)
      pos_emb = pos_emb * W_pos_emb_std
      if pos_emb_type == PositionalEmbedding.SUM:
        inputs = inputs + pos_emb
        if val_pos_emb:
          values_in = inputs
      else:
        shape = list(inputs.shape)
        shape[ca] = pos_emb.shape[ca]
        inputs = jnp.concatenate([inputs, jnp.broadcast_to(pos_emb, shape)],
                                 ca)
        if val_pos_emb:
          values_in = inputs

    def flat(x):  # (N, S, C)
      x = jnp.moveaxis(x, (batch_axis, ca), (0, -1))
      return x.reshape(n, -1, x.shape[-1])

    x, xv = flat(inputs), flat(values_in)
    heads_dot = lambda z, mats: jnp.moveaxis(jnp.dot(z, mats), 2, 0)
    values = heads_dot(xv, V)
    keys = heads_dot(x, K)
    queries = keys if linear_scaling else heads_dot(x, Q)
    g = queries @ jnp.swapaxes(keys, -1, -2)
    g = g * qk_std() / (x.shape[-1] * n_chan_key**(1 if linear_scaling
                                                   else 0.5))
    if mask is not None:
      m = jnp.all(mask, axis=ca, keepdims=True)
      m = jnp.moveaxis(m, (batch_axis, ca), (0, -1)).reshape(1, n, 1, -1)
      fill = _NEG_INF if mech == AttentionMechanism.SOFTMAX else 0.0
      g = jnp.where(m, jnp.asarray(fill, g.dtype), g)
    g = mech.fn()(g)
    heads = jnp.moveaxis(g @ values, 0, -1)
    heads = heads.reshape(heads.shape[:-2] + (-1,))
    out = heads @ W_out * (ov_std() /
                           (n_chan_val * n_heads * xv.shape[-1])**0.5)
    out = out.reshape((n,) + spatial_shape + (n_chan_out,))
    out = jnp.moveaxis(out, (0, -1), (batch_axis, ca))
    if b is not None:
      out = out + b_std * b
    return out

  def rule(k: Kernel, **kwargs) -> Kernel:
    ndim = len(k.shape1)
    spatial_shape = tuple(k.shape1[i] for i in spatial_axes(
        len(k.shape1), k.batch_axis, k.channel_axis))
    ntk = k.ntk
    if ntk is not None and jnp.ndim(ntk) == 0:
      ntk = jnp.broadcast_to(ntk, k.nngp.shape)
    w_in, w_pe = 1.0, W_pos_emb_std**2
    r11 = r12 = r22 = None
    if pos_emb_type != PositionalEmbedding.NONE:
      if pos_emb_type == PositionalEmbedding.CONCAT:
        c_in = k.shape1[k.channel_axis % ndim]
        c_pe = c_in if n_chan_pos_emb is None else n_chan_pos_emb
        w_in, w_pe = c_in / (c_in + c_pe), w_pe * c_pe / (c_in + c_pe)
      r = jnp.asarray(_pos_emb_cov(spatial_shape, pos_emb_p_norm,
                                   pos_emb_decay_fn), k.nngp.dtype)
      r12 = r[None, None]
      r11 = r[None] if k.diagonal_batch else r12
      r22 = None if k.cov2 is None else r11
      if k.mask1 is not None or k.mask2 is not None:
        m11, m12, m22 = masking.mask_prods(k)
        zero = lambda a, m: a if m is None else jnp.where(m, 0.0, a)
        r11, r12 = zero(r11, m11), zero(r12, m12)
        r22 = None if r22 is None else zero(r22, m22)

    def interp(mat, rr):
      if mat is None or rr is None:
        return mat
      return w_in * mat + w_pe * rr

    cov1_i, cov2_i = interp(k.cov1, r11), interp(k.cov2, r22)
    nngp_i, ntk_i = interp(k.nngp, r12), interp(ntk, r12)
    if linear_scaling:
      return _linear_kernel(k, ntk, cov1_i, cov2_i, nngp_i, ntk_i)
    if mech != AttentionMechanism.IDENTITY:
      raise NotImplementedError(
          f"{name}: no closed-form kernel for linear_scaling=False with "
          f"attention_mechanism={mech.name}; use linear_scaling=True or "
          f"IDENTITY.")
    return _identity_kernel(k, ntk, cov1_i, cov2_i, nngp_i, ntk_i)

  def _weights(k, cov, mask):
    """``G[i, x, x']`` (zipped spatial axes) from the variances of sample
    ``i``'s positions, masked keys excluded."""
    if cov is None:
      return None
    if not k.diagonal_batch:
      cov = jnp.moveaxis(jnp.diagonal(cov, axis1=0, axis2=1), -1, 0)
    if mask is not None:
      m = masking.spatial_mask(masking.collapse_channels(
          mask, k.channel_axis % len(k.shape1)), k)
      m = m.reshape(m.shape[:1] + sum(((1, s) for s in m.shape[1:]), ()))
      fill = _NEG_INF if mech == AttentionMechanism.SOFTMAX else 0.0
      cov = jnp.where(m, jnp.asarray(fill, cov.dtype), cov)
    if mech == AttentionMechanism.SOFTMAX:
      return jax.nn.softmax(qk_std() * cov, axis=tuple(range(2, cov.ndim, 2)))
    return mech.fn()(qk_std() * cov)

  def _contract(mat, g1, g2, both_batch):
    """``sum_{x', y'} g1[i, x, x'] mat[i, (j,) x', y'] g2[(j,) y, y']``."""
    if mat is None or g1 is None:
      return mat
    n = (g1.ndim - 1) // 2
    letters = "abcdefgh"
    xs, xps = letters[:n], letters[n:2 * n].upper()
    ys, yps = "pqrstuvw"[:n], "PQRSTUVW"[:n]
    zip_ = lambda a, b: "".join(u + v for u, v in zip(a, b))
    g1s = "i" + zip_(xs, xps)
    if both_batch:
      g2s, ms, outs = "j" + zip_(ys, yps), "ij" + zip_(xps, yps), (
          "ij" + zip_(xs, ys))
    else:
      g2s, ms, outs = "i" + zip_(ys, yps), "i" + zip_(xps, yps), (
          "i" + zip_(xs, ys))
    return jnp.einsum(f"{g1s},{ms},{g2s}->{outs}", g1, mat, g2,
                      precision=jax.lax.Precision.HIGHEST)

  def _linear_kernel(k, ntk, cov1_i, cov2_i, nngp_i, ntk_i):
    g1 = _weights(k, cov1_i, k.mask1)
    g2 = g1 if k.cov2 is None else _weights(k, cov2_i, k.mask2)
    pick = lambda plain, mixed: mixed if val_pos_emb else plain
    both = not k.diagonal_batch
    cov1 = affine(_contract(pick(k.cov1, cov1_i), g1, g1, both), ov_std(),
                  b_std)
    cov2 = None if k.cov2 is None else affine(
        _contract(pick(k.cov2, cov2_i), g2, g2, both), ov_std(), b_std)
    nngp = affine(_contract(pick(k.nngp, nngp_i), g1, g2, True), ov_std(),
                  b_std)
    new_ntk = None
    if ntk is not None:
      base = nngp if b_std is None else nngp - b_std**2
      new_ntk = affine(_contract(pick(ntk, ntk_i), g1, g2, True), ov_std(),
                       b_std) + 2 * base
    return k.replace(cov1=cov1, cov2=cov2, nngp=nngp, ntk=new_ntk,
                     is_gaussian=True, is_input=False)

  def _identity_kernel(k, ntk, cov1_i, cov2_i, nngp_i, ntk_i):
    def dot(lhs, rhs, batch_ndim):
      if lhs is None:
        return None
      axes = tuple(range(batch_ndim, lhs.ndim))
      rhs = lhs if rhs is None else rhs
      return jnp.sum(lhs * rhs, axis=axes, keepdims=True)

    cb = k.cov_batch_ndim
    d11 = dot(cov1_i, None if val_pos_emb else k.cov1, cb)
    d12 = dot(nngp_i, None if val_pos_emb else k.nngp, 2)
    d22 = dot(cov2_i, None if val_pos_emb else k.cov2, cb)
    std = qk_std() * ov_std()
    nngp = affine(d12 * nngp_i, std, b_std)
    cov1 = affine(d11 * cov1_i, std, b_std)
    cov2 = None if d22 is None else affine(d22 * cov2_i, std, b_std)
    new_ntk = None
    if ntk is not None:
      if val_pos_emb or pos_emb_type == PositionalEmbedding.NONE:
        t = 2 * dot(nngp_i, ntk_i, 2)
      else:
        t = dot(nngp_i, ntk, 2) + dot(k.nngp, ntk_i, 2)
      new_ntk = affine(t * nngp_i + d12 * (ntk_i + 4 * nngp_i), std, b_std)
    return k.replace(cov1=cov1, cov2=cov2, nngp=nngp, ntk=new_ntk,
                     is_gaussian=True, is_input=False)

  def mask_fn(mask, input_shape):
    return masking.collapse_channels(mask, channel_axis % len(input_shape))

  return init_fn, apply_fn, rule, Requirements(
      diagonal_spatial_ok=False, packable=False, blocker=name,
      batch_axis=batch_axis, channel_axis=channel_axis), masking.MaskRule(
          mask_fn)
