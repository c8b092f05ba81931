"""NTK by structured derivatives (`NtkImplementation.STRUCTURED_DERIVATIVES`).

Novak, Sohl-Dickstein & Schoenholz, "Fast Finite Width Neural Tangent
Kernel" (ICML 2022), on public JAX only (`jax.make_jaxpr`, `jax.extend.core`).

1. ``f`` (one sample of it when ``vmap_axes`` is given) is traced to a jaxpr
   with the parameter leaves as inputs.
2. Analysis: a parameter flows through *pass-through* equations (reshape,
   transpose, dtype conversion, multiplication by a constant scalar -- an
   orthogonal map times a scale, which leaves ``J J^T`` unchanged up to the
   scale squared) to its *sites*: the equations that really consume it
   (``x @ W``, a convolution, a bias add, ...). Sites inside ``jit`` calls are
   found by recursing into them.
3. One reverse pass per output gives ``df/dy`` at every site output ``y`` (by
   adding a zero perturbation to ``y`` and differentiating w.r.t. it), and
   the site operands are recorded.
4. Per parameter leaf: if it has a single site with an MJJMP rule (e.g.
   ``dot_general``) the contribution is computed from Gram matrices of the
   operands and cotangents, never forming ``df/dW``; otherwise ``J = df/dy .
   dy/dw`` by the primitive's Jacobian rule (`structured_rules`) and the
   contraction of `_common.contract`.

The numbers equal `jacobian.py`'s up to float round-off.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore
from jax.tree_util import tree_map

from ..axes import canonical_axes
from . import _common
from . import jaxpr_eval, structured_rules
from .jacobian import jacobian_contraction_ntk_fn

__all__ = ["structured_derivatives_ntk_fn", "analyze", "Plan"]



@dataclasses.dataclass
class Site:
  key: tuple          # path of equation indices (through nested calls)
  eqn: Any
  uses: list          # [(operand position, leaf index, scale)]


@dataclasses.dataclass
class Plan:
  sites: dict = dataclasses.field(default_factory=dict)
  recurse: set = dataclasses.field(default_factory=set)
  leaf_uses: dict = dataclasses.field(default_factory=dict)
  unsupported: Optional[str] = None


def _is_float(v) -> bool:
  return jnp.issubdtype(v.aval.dtype, jnp.inexact)


def _scalar_const(v, constvals: dict):
  """Value of a scalar literal/constant operand, or None."""
  if isinstance(v, jcore.Literal):
    val = v.val
  elif v in constvals:
    val = constvals[v]
  else:
    return None
  return val if np.shape(val) == () else None


def _use_counts(jaxpr) -> dict:
  counts = {}
  for eqn in jaxpr.eqns:
    for v in eqn.invars:
      if not isinstance(v, jcore.Literal):
        counts[v] = counts.get(v, 0) + 1
  for v in jaxpr.outvars:
    if not isinstance(v, jcore.Literal):
      counts[v] = counts.get(v, 0) + 1
  return counts


def _analyze(jaxpr, consts, tags_in: list, path: tuple, plan: Plan) -> list:
  """Fills ``plan``; returns the tags of ``jaxpr``'s outputs.

  A tag is ``(leaf, scale, exclusive)``: the variable equals ``scale * P(w)``
  for parameter leaf ``w`` and an orthogonal ``P``; ``exclusive``: no other
  use of the chain exists (so passing through is sound).
  """
  counts = _use_counts(jaxpr)
  constvals = dict(zip(jaxpr.constvars, consts))
  tags = {v: t for v, t in zip(jaxpr.invars, tags_in) if t is not None}
  for i, eqn in enumerate(jaxpr.eqns):
    key = path + (i,)
    tagged = [(pos, tags[v]) for pos, v in enumerate(eqn.invars)
              if not isinstance(v, jcore.Literal) and v in tags]
    if not tagged:
      continue
    name = eqn.primitive.name
    if len(tagged) == 1 and len(eqn.outvars) == 1:
      pos, (leaf, scale, excl) = tagged[0]
      v = eqn.invars[pos]
      excl = excl and counts[v] == 1
      out = eqn.outvars[0]
      if excl and _is_float(out):
        if name in structured_rules.PASS_THROUGH and len(eqn.invars) == 1:
          tags[out] = (leaf, scale, True)
          continue
        if name == "neg":
          tags[out] = (leaf, -scale, True)
          continue
        if name in ("mul", "div") and len(eqn.invars) == 2:
          c = _scalar_const(eqn.invars[1 - pos], constvals)
          if c is not None and (name == "mul" or pos == 0):
            tags[out] = (leaf, scale * c if name == "mul" else scale / c,
                         True)
            continue
    if name in jaxpr_eval.CALLS and isinstance(eqn.params.get("jaxpr"),
                                               jcore.ClosedJaxpr):
      inner = eqn.params["jaxpr"]
      inner_tags = []
      for v in eqn.invars:
        t = None if isinstance(v, jcore.Literal) else tags.get(v)
        if t is not None:
          t = (t[0], t[1], t[2] and counts[v] == 1)
        inner_tags.append(t)
      plan.recurse.add(key)
      out_tags = _analyze(inner.jaxpr, inner.consts, inner_tags, key, plan)
      for v, t in zip(eqn.outvars, out_tags):
        if t is not None:
          tags[v] = t
      continue
    site = Site(key, eqn, [(pos, leaf, scale) for pos, (leaf, scale, _)
                           in tagged])
    plan.sites[key] = site
    for pos, leaf, scale in site.uses:
      plan.leaf_uses.setdefault(leaf, []).append((key, pos, scale))
  outs = []
  for v in jaxpr.outvars:
    t = None if isinstance(v, jcore.Literal) else tags.get(v)
    outs.append(t)
  return outs


def analyze(closed, n_params: int) -> Plan:
  """`Plan` of the sites of the first ``n_params`` inputs of ``closed``."""
  plan = Plan()
  tags = [(i, 1.0, True) for i in range(n_params)]
  tags += [None] * (len(closed.jaxpr.invars) - n_params)
  out_tags = _analyze(closed.jaxpr, closed.consts, tags, (), plan)
  if any(t is not None for t in out_tags):
    plan.unsupported = "f returns (a reshaping of) its parameters directly"
  return plan


def _run(jaxpr, consts, args, path, plan: Plan, eps: dict, record: dict):
  """Evaluates ``jaxpr`` adding ``eps[key]`` to each site's outputs and
  recording each site's operands in ``record[key]``."""
  def step(i, eqn, invals):
    key = path + (i,)
    if key in plan.recurse:
      inner = eqn.params["jaxpr"]
      outs = _run(inner.jaxpr, inner.consts, invals, key, plan, eps, record)
    else:
      outs = jaxpr_eval.bind(eqn, invals)
    if key in plan.sites:
      record[key] = invals
      outs = [o if e is None else o + e for o, e in zip(outs, eps[key])]
    return outs

  return jaxpr_eval.eval_jaxpr(jaxpr, consts, args, step)


def _zero_eps(plan: Plan) -> dict:
  return {k: [jnp.zeros(v.aval.shape, v.aval.dtype) if _is_float(v) else None
              for v in s.eqn.outvars] for k, s in plan.sites.items()}


def _side(closed, plan: Plan, n_params: int, flat_args: list):
  """``df/dy`` at every site for every output leaf, and site operands.

  Returns ``(dfs, other, tagged)``: ``dfs[l][key]`` a list (per site output)
  of arrays ``out_l.shape + y.shape``; ``other[key]`` the operands with
  parameter-carrying ones set to None; ``tagged[key]`` the reverse.
  """
  def h(eps):
    record = {}
    outs = _run(closed.jaxpr, closed.consts, flat_args, (), plan, eps,
                record)
    return outs, record

  outs, pull, record = jax.vjp(h, _zero_eps(plan), has_aux=True)
  dfs = []
  for l, o in enumerate(outs):
    size = int(np.prod(o.shape, dtype=np.int64))
    basis = jnp.eye(size, dtype=o.dtype).reshape((size,) + o.shape)

    def one(e, l=l):
      cts = [e if j == l else jnp.zeros(u.shape, u.dtype)
             for j, u in enumerate(outs)]
      return pull(cts)[0]

    d = jax.vmap(one)(basis)
    dfs.append(tree_map(lambda a, o=o: a.reshape(o.shape + a.shape[1:]), d))
  tagged_pos = {k: {p for p, _, _ in s.uses} for k, s in plan.sites.items()}
  other = {k: [None if p in tagged_pos[k] else v for p, v in enumerate(vals)]
           for k, vals in record.items()}
  tagged = {k: [v if p in tagged_pos[k] else None
                for p, v in enumerate(vals)] for k, vals in record.items()}
  return dfs, other, tagged


def _merge(other: list, tagged: list) -> list:
  return [t if o is None else o for o, t in zip(other, tagged)]


def structured_derivatives_ntk_fn(f: Callable, trace_axes=(-1,),
                                  diagonal_axes=(), vmap_axes=None,
                                  _j_rules: bool = True, _s_rules: bool = True,
                                  _fwd=None, **unused):
  """``ntk_fn(x1, x2, params, **kwargs)`` by structured derivatives."""

  def ntk_fn(x1, x2: Optional = None, params=None, **kwargs):
    kw1, kw2 = _common.split_kwargs(kwargs, x1, x2)
    fx1 = _common.check_params(f, params, x1, kw1)
    same = _common.all_none(x2)
    fx2 = fx1 if same else _common.check_params(f, params, x2, kw2)
    spec = _common.canonical_vmap(vmap_axes, x1, fx1, kw1)
    # Non-array kwargs (flags, modes) are closed over: they cannot be jaxpr
    # inputs. They must be the same for x1 and x2.
    static = {k: v for k, v in kw1.items() if not _all_arrays(v)}
    if any(not _all_arrays(kw2[k]) and kw2[k] is not v and kw2[k] != v
           for k, v in static.items()):
      return jacobian_contraction_ntk_fn(f, trace_axes, diagonal_axes,
                                         vmap_axes)(x1, x2, params, **kwargs)
    keys = tuple(k for k in kwargs if k not in static)
    f_static = (lambda p, x, **kw: f(p, x, **kw, **static)) if static else f
    p_leaves, p_tree = jax.tree_util.tree_flatten(params)
    n_params = len(p_leaves)
    if spec.active:
      g = _common.per_sample_fn(f_static, spec, keys)
    else:
      g = lambda p, x, *args: f_static(p, x, **dict(zip(keys, args)))

    def flat_g(pl, x, *args):
      out = g(jax.tree_util.tree_unflatten(p_tree, pl), x, *args)
      return jax.tree_util.tree_leaves(out)

    def one_example(x, args):
      # Abstract shapes of one slice (vmap) or the whole batch.
      if not spec.active:
        return x, args
      take = lambda a, ax: a if ax is None else jax.ShapeDtypeStruct(
          a.shape[:ax] + a.shape[ax + 1:], a.dtype)
      xs = tree_map(take, tree_map(_common.shape_dtype, x), spec.x_axis)
      args = [a if spec.kw_axes.get(k) is None else
              tree_map(take, tree_map(_common.shape_dtype, a),
                       spec.kw_axes[k])
              for k, a in zip(keys, args)]
      return xs, args

    def trace(x, args):
      xs, as_ = one_example(x, args)
      closed = jax.make_jaxpr(flat_g)(p_leaves, xs, *as_)
      return closed, analyze(closed, n_params)

    def fallback(reason):
      warnings.warn(f"Structured derivatives: {reason}; using Jacobian "
                    f"contraction.", structured_rules.StructureWarning)
      return jacobian_contraction_ntk_fn(f, trace_axes, diagonal_axes,
                                         vmap_axes)(x1, x2, params, **kwargs)

    args1 = [kw1[k] for k in keys]
    args2 = args1 if same else [kw2[k] for k in keys]
    closed1, plan = trace(x1, args1)
    if plan.unsupported:
      return fallback(plan.unsupported)
    if same or spec.active:
      closed2, plan2 = closed1, plan
    else:  # x2's batch size may differ: its own trace, same sites.
      closed2, plan2 = trace(x2, args2)
      if (set(plan2.sites) != set(plan.sites) or
          plan2.leaf_uses != plan.leaf_uses):
        return fallback("f(x2) traces to a different program than f(x1)")

    def side(closed, plan_, x, *args):
      flat = p_leaves + jax.tree_util.tree_leaves((x, list(args)))
      return _side(closed, plan_, n_params, flat)

    def run_side(closed, plan_, x, args):
      fn = lambda x_, *a: side(closed, plan_, x_, *a)
      if spec.active:
        fn = jax.vmap(fn, in_axes=_common.vmap_in_axes(spec, keys),
                      out_axes=(0, 0, None))
      return fn(x, *args)

    s1 = run_side(closed1, plan, x1, args1)
    s2 = s1 if same else run_side(closed2, plan2, x2, args2)

    fx_axes = (jax.tree_util.tree_leaves(spec.fx_axis) if spec.active
               else [None] * len(jax.tree_util.tree_leaves(fx1)))
    out = []
    for l, (o1, o2) in enumerate(zip(jax.tree_util.tree_leaves(fx1),
                                     jax.tree_util.tree_leaves(fx2))):
      out.append(_leaf_ntk(plan, s1, s2, l, o1.shape, o2.shape, fx_axes[l],
                           trace_axes, diagonal_axes, _j_rules, _s_rules,
                           o1.dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fx1), out)

  return ntk_fn


def _all_arrays(v) -> bool:
  leaves = jax.tree_util.tree_leaves(v)
  return bool(leaves) and all(
      isinstance(l, (jax.Array, np.ndarray, np.generic)) for l in leaves)


def _leaf_ntk(plan: Plan, s1, s2, l: int, shape1, shape2, fx_axis,
              trace_axes, diagonal_axes, j_rules, s_rules, dtype):
  """NTK of output leaf ``l``: sum over parameter leaves."""
  ndim = len(shape1)
  if len(shape2) != ndim:
    raise ValueError(f"f(x1) of shape {shape1} and f(x2) of shape {shape2} "
                     f"must have the same number of axes.")
  trace = canonical_axes(trace_axes, ndim, "trace_axes")
  diag = canonical_axes(diagonal_axes, ndim, "diagonal_axes")
  _common.check_trace_diagonal(shape1, shape2, trace, diag)
  ids1, ids2, out_ids = _common.output_ids(ndim, trace, diag)
  (dfs1, oth1, tag1), (dfs2, oth2, tag2) = s1, s2
  vm = fx_axis is not None
  n_lead = ndim - 1 if vm else ndim

  def df_of(dfs, key):
    d = dfs[l][key]
    return [None if a is None else (jnp.moveaxis(a, 0, fx_axis) if vm else a)
            for a in d]

  def jac(dfs, oth, tag, key, pos):
    site = plan.sites[key]
    if not vm:
      vals = _merge(oth[key], tag[key])
      return structured_rules.jacobian(dfs[l][key], site.eqn, vals, pos,
                                       n_lead, j_rules)

    def per_sample(d, o):
      return structured_rules.jacobian(d, site.eqn, _merge(o, tag[key]), pos,
                                       n_lead, j_rules)
    j = jax.vmap(per_sample)(dfs[l][key], oth[key])
    return jnp.moveaxis(j, 0, fx_axis)

  total = jnp.zeros(_kernel_shape(shape1, shape2, trace, diag), dtype)
  for leaf, uses in sorted(plan.leaf_uses.items()):
    key, pos, scale = uses[0]
    site = plan.sites[key]
    rule = structured_rules.MJJMP_RULES.get(site.eqn.primitive.name)
    if (len(uses) == 1 and s_rules and rule is not None and
        len(site.eqn.outvars) == 1):
      in1 = _merge(oth1[key], tag1[key])
      in2 = _merge(oth2[key], tag2[key])
      # The other operand has a leading sample axis (vmap) unless it also
      # carries parameters (then it does not depend on the inputs).
      linked = vm and (1 - pos) not in {p for p, _, _ in site.uses}
      part = rule(df_of(dfs1, key)[0], df_of(dfs2, key)[0], in1, in2, pos,
                  site.eqn.params, ids1, ids2, out_ids,
                  ids1[fx_axis] if linked else None,
                  ids2[fx_axis] if linked else None)
      part = part / _common.trace_size(shape1, trace)
    else:
      j1 = sum(jac(dfs1, oth1, tag1, k, p) for k, p, _ in uses)
      j2 = j1 if s1 is s2 else sum(jac(dfs2, oth2, tag2, k, p)
                                  for k, p, _ in uses)
      part = _common.contract(j1, j2, ndim, trace, diag)
    total = total + (scale * scale) * part
  return total


def _kernel_shape(shape1, shape2, trace, diag) -> tuple:
  out = ()
  for i, (a, b) in enumerate(zip(shape1, shape2)):
    if i in trace:
      continue
    out += (a,) if i in diag else (a, b)
  return out
