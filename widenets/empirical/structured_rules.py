"""Per-primitive Jacobian structure rules for structured derivatives.

For an equation ``y = prim(..., w, ...)`` where ``w`` carries parameters, the
NTK contribution of ``w`` is ``sum_w J1[o1, w] J2[o2, w]`` with
``J[o, w] = sum_y df/dy[o, y] dy/dw[y, w]``. Two kinds of rules:

* **Jacobian rules** ``jacobian(df, invals, pos, params)``: ``J`` from
  ``df`` (leading output axes ``A``, then ``y``'s axes) using the structure of
  ``dy/dw`` (a sum over broadcast axes, a slice, an elementwise product, a
  transposed convolution ...), never materializing ``dy/dw``.
* **MJJMP rules** ``mjjmp(...)``: the contribution itself, without ``J``.
  For ``y = x W`` (``dot_general``) it is
  ``sum (x1 . x2^T) * (df1/dy . df2/dy^T)`` -- the Gram matrix of the other
  operand times that of the cotangents -- which is what makes fully connected
  networks orders of magnitude cheaper than forming ``df/dW``.

Primitives without a rule use the plain Jacobian (a VJP of the primitive per
output) and a `StructureWarning` names the primitive once.
"""
from __future__ import annotations

import warnings
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .conv_grad import weight_grad
from .jaxpr_eval import bind

__all__ = ["StructureWarning", "jacobian", "MJJMP_RULES",
           "JACOBIAN_RULES", "PASS_THROUGH", "generic_jacobian"]


class StructureWarning(UserWarning):
  """A primitive without a structure rule used the plain-Jacobian fallback."""


# Unary primitives that only permute/reshape/retype their input: an
# orthogonal map P with P P^T = I, so the NTK contribution of a parameter is
# the same before and after (structured derivatives pass through them).
PASS_THROUGH = frozenset({
    "reshape", "transpose", "squeeze", "expand_dims", "convert_element_type",
    "copy", "copy_p", "rev",
})


def _flat_apply(fn: Callable, df: jax.Array, n_lead: int) -> jax.Array:
  """Applies ``fn`` (on one cotangent of ``y``'s shape) over the leading
  ``n_lead`` output axes of ``df``."""
  lead = df.shape[:n_lead]
  flat = df.reshape((-1,) + df.shape[n_lead:])
  out = jax.vmap(fn)(flat)
  return out.reshape(lead + out.shape[1:])


def generic_jacobian(df: Sequence, eqn, invals: Sequence, pos: int,
                     n_lead: int) -> jax.Array:
  """``J = df . dy/dw`` by a VJP of the primitive (any primitive)."""
  def prim(w):
    vals = list(invals)
    vals[pos] = w
    return bind(eqn, vals)

  _, pull = jax.vjp(prim, invals[pos])
  lead = df[0].shape[:n_lead]
  flats = [d.reshape((-1,) + d.shape[n_lead:]) for d in df]
  out = jax.vmap(lambda *cts: pull(list(cts))[0])(*flats)
  return out.reshape(lead + out.shape[1:])


def _unbroadcast(ct: jax.Array, shape: tuple) -> jax.Array:
  """Sums a cotangent of a broadcasting elementwise op to ``shape``."""
  if ct.shape == tuple(shape):
    return ct
  if len(shape) == 0:
    return jnp.sum(ct)
  axes = tuple(i for i, (a, b) in enumerate(zip(shape, ct.shape)) if a != b)
  return jnp.sum(ct, axes, keepdims=True)


# --- Jacobian rules: (one cotangent of y, invals, pos, params) -> cotangent
# of invals[pos]. Applied over the leading output axes by `jacobian`. ---------


def _j_add(ct, invals, pos, params):
  return _unbroadcast(ct, jnp.shape(invals[pos]))


def _j_sub(ct, invals, pos, params):
  return _unbroadcast(ct if pos == 0 else -ct, jnp.shape(invals[pos]))


def _j_neg(ct, invals, pos, params):
  return -ct


def _j_mul(ct, invals, pos, params):
  return _unbroadcast(ct * invals[1 - pos], jnp.shape(invals[pos]))


def _j_div(ct, invals, pos, params):
  a, b = invals
  if pos == 0:
    return _unbroadcast(ct / b, jnp.shape(a))
  return _unbroadcast(-ct * a / b**2, jnp.shape(b))


def _j_broadcast_in_dim(ct, invals, pos, params):
  if pos != 0:
    return None
  w = invals[0]
  dims = tuple(params["broadcast_dimensions"])
  summed = tuple(i for i in range(ct.ndim) if i not in dims)
  ct = jnp.sum(ct, summed)
  # Axes of w that were size-1 and broadcast stay in `dims` with size > 1.
  expand = tuple(i for i, (a, b) in enumerate(zip(jnp.shape(w), ct.shape))
                 if a != b)
  if expand:
    ct = jnp.sum(ct, expand, keepdims=True)
  return ct.reshape(jnp.shape(w))


def _j_reduce_sum(ct, invals, pos, params):
  w = invals[0]
  axes = tuple(params["axes"])
  kept = tuple(i for i in range(jnp.ndim(w)) if i not in axes)
  return lax.broadcast_in_dim(ct, jnp.shape(w), kept)


def _j_reshape(ct, invals, pos, params):
  return ct.reshape(jnp.shape(invals[0]))


def _j_transpose(ct, invals, pos, params):
  return jnp.transpose(ct, np.argsort(params["permutation"]))


def _j_squeeze(ct, invals, pos, params):
  return ct.reshape(jnp.shape(invals[0]))


def _j_convert(ct, invals, pos, params):
  return ct.astype(jnp.result_type(invals[0]))


def _j_pad(ct, invals, pos, params):
  if pos != 0:
    return None
  config = params["padding_config"]
  if any(i != 0 for _, _, i in config) or any(
      lo < 0 or hi < 0 for lo, hi, _ in config):
    return None  # interior/negative padding: the generic VJP handles it.
  idx = tuple(slice(lo, ct.shape[d] - hi) for d, (lo, hi, _) in
              enumerate(config))
  return ct[idx]


def _j_concatenate(ct, invals, pos, params):
  dim = params["dimension"]
  start = sum(jnp.shape(v)[dim] for v in invals[:pos])
  return lax.slice_in_dim(ct, start, start + jnp.shape(invals[pos])[dim],
                          axis=dim)


def _j_dot_general(ct, invals, pos, params):
  # Explicit J of y = dot_general(lhs, rhs) w.r.t. one operand: an einsum of
  # the cotangent with the other operand.
  ids = _dot_ids(invals, pos, params, side=0)
  return jnp.einsum(ct, ids["y"], invals[1 - pos], ids["other"], ids["w"])


def _j_conv(ct, invals, pos, params):
  # The kernel's Jacobian: shifted input slices times the cotangent (see
  # `conv_grad`; JAX's VJP would run a slow grouped convolution under vmap).
  # The input's Jacobian falls back to the VJP (a transposed convolution).
  if pos != 1:
    return None
  return weight_grad(invals[0], ct, jnp.shape(invals[1]), params)


JACOBIAN_RULES = {
    "add": _j_add, "add_any": _j_add, "sub": _j_sub, "neg": _j_neg,
    "mul": _j_mul, "div": _j_div,
    "broadcast_in_dim": _j_broadcast_in_dim, "reduce_sum": _j_reduce_sum,
    "reshape": _j_reshape, "transpose": _j_transpose, "squeeze": _j_squeeze,
    "expand_dims": _j_reshape, "convert_element_type": _j_convert,
    "copy": lambda ct, *a: ct, "copy_p": lambda ct, *a: ct,
    "pad": _j_pad, "concatenate": _j_concatenate,
    "dot_general": _j_dot_general, "conv_general_dilated": _j_conv,
}

# Primitives whose Jacobian rule is the (structured) VJP JAX already has:
# the weight gradient of a convolution is itself a convolution.
_STRUCTURED_VJP = frozenset({"conv_general_dilated", "select_n",
                             "dynamic_slice", "slice", "gather",
                             "reduce_max", "cumsum", "integer_pow", "exp",
                             "log", "tanh", "logistic", "sqrt", "rsqrt",
                             "max", "min", "erf", "sin", "cos", "abs",
                             "square", "pow", "dynamic_update_slice",
                             "rev"})

_warned: set = set()


def jacobian(df: Sequence, eqn, invals: Sequence, pos: int, n_lead: int,
             use_rules: bool = True) -> jax.Array:
  """``J[A, w] = sum_y df[A, y] dy/dw[y, w]`` for ``w = invals[pos]``.

  ``df`` is a list (one per output of ``eqn``) of arrays ``A + y.shape``.
  """
  name = eqn.primitive.name
  rule = JACOBIAN_RULES.get(name) if use_rules else None
  if rule is not None and len(df) == 1:
    probe = jax.eval_shape(
        lambda c: rule(c, invals, pos, eqn.params),
        jax.ShapeDtypeStruct(df[0].shape[n_lead:], df[0].dtype))
    if probe is not None:
      return _flat_apply(lambda c: rule(c, invals, pos, eqn.params), df[0],
                         n_lead)
  # A rule that declines (e.g. interior padding) falls back silently: its
  # VJP is still structured (a strided slice).
  if (use_rules and rule is None and name not in _STRUCTURED_VJP and
      name not in _warned):
    _warned.add(name)
    warnings.warn(
        f"Structured derivatives: no structure rule for primitive {name!r}; "
        f"using its plain Jacobian (a VJP per output).", StructureWarning,
        stacklevel=4)
  return generic_jacobian(df, eqn, invals, pos, n_lead)


# --- MJJMP rules ---------------------------------------------------------------


def _dot_ids(invals, pos, params, side: int, first_free: int = 1000,
             o_lead: int = 0):
  """Einsum ids for ``y = dot_general(lhs, rhs)`` seen from ``w =
  invals[pos]``: ids of ``w`` are shared between the two sides, ids of the
  other operand's free axes (and the matching ``y`` axes) are per side."""
  (c_l, c_r), (b_l, b_r) = params["dimension_numbers"]
  c = (tuple(c_l), tuple(c_r))
  b = (tuple(b_l), tuple(b_r))
  o = 1 - pos
  w_nd, o_nd = jnp.ndim(invals[pos]), jnp.ndim(invals[o]) - o_lead
  w_ids = [first_free + i for i in range(w_nd)]
  o_free_base = first_free + w_nd + side * o_nd
  o_ids = [None] * o_nd
  for ow, ww in zip(b[o], b[pos]):
    o_ids[ow] = w_ids[ww]
  for ow, ww in zip(c[o], c[pos]):
    o_ids[ow] = w_ids[ww]
  o_free = [i for i in range(o_nd) if o_ids[i] is None]
  for i in o_free:
    o_ids[i] = o_free_base + i
  w_free = [i for i in range(w_nd) if i not in b[pos] and i not in c[pos]]
  y_ids = [w_ids[i] for i in b[pos]]
  lhs_free = [w_ids[i] for i in w_free] if pos == 0 else [o_ids[i]
                                                         for i in o_free]
  rhs_free = [o_ids[i] for i in o_free] if pos == 0 else [w_ids[i]
                                                         for i in w_free]
  y_ids += lhs_free + rhs_free
  return {"w": w_ids, "other": o_ids, "y": y_ids}


def _mjjmp_dot_general(df1, df2, in1, in2, pos, params, out_ids1, out_ids2,
                       out_ids, sample1, sample2):
  """``sum_w J1 J2`` for ``y = dot_general``: four-operand einsum; the
  contraction order (Gram of the other operand, Gram of the cotangents) is
  chosen by the einsum path optimizer."""
  base = 4 * (len(out_ids1) + 1) + 10
  i1 = _dot_ids(in1, pos, params, 0, base, int(sample1 is not None))
  i2 = _dot_ids(in2, pos, params, 1, base, int(sample2 is not None))
  o1, o2 = in1[1 - pos], in2[1 - pos]
  lead1 = [sample1] if sample1 is not None else []
  lead2 = [sample2] if sample2 is not None else []
  return jnp.einsum(df1, list(out_ids1) + i1["y"], o1, lead1 + i1["other"],
                    df2, list(out_ids2) + i2["y"], o2, lead2 + i2["other"],
                    list(out_ids), optimize="optimal")


MJJMP_RULES = {"dot_general": _mjjmp_dot_general}

