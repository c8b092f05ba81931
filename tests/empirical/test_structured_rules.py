"""Per-primitive structure rules of structured derivatives agree with
`jax.jacfwd`, and the parameter analysis passes through reshapes/scales."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from widenets.empirical import _common
from widenets.empirical import structured
from widenets.empirical import jaxpr_eval, structured_rules

K = jax.random.split(jax.random.PRNGKey(0), 8)


def _single_eqn(fn, args, name):
  closed = jax.make_jaxpr(fn)(*args)
  eqns = [e for e in closed.jaxpr.eqns if e.primitive.name == name]
  assert eqns, closed
  eqn = eqns[0]
  env = dict(zip(closed.jaxpr.invars, args))
  invals = [v.val if hasattr(v, "val") else env[v] for v in eqn.invars]
  return eqn, invals


def _ref_jacobian(df, eqn, invals, pos):
  def prim(w):
    vals = list(invals)
    vals[pos] = w
    return jaxpr_eval.bind(eqn, vals)[0]
  jac = jax.jacfwd(prim)(invals[pos])  # y.shape + w.shape
  y_nd = df.ndim - 1
  return jnp.tensordot(df, jac, y_nd)


CASES = [
    ("add", lambda w, x: lax.add(w, x), [(3, 4), (3, 4)], 0),
    ("add", lambda w, x: lax.add(x, w), [(), (3, 4)], 1),
    ("sub", lambda w, x: lax.sub(x, w), [(3, 4), (3, 4)], 1),
    ("sub", lambda w, x: lax.sub(w, x), [(3, 4), (3, 4)], 0),
    ("neg", lambda w: lax.neg(w), [(3, 4)], 0),
    ("mul", lambda w, x: lax.mul(w, x), [(3, 4), (3, 4)], 0),
    ("div", lambda w, x: lax.div(w, x), [(3, 4), (3, 4)], 0),
    ("div", lambda x, w: lax.div(x, w), [(3, 4), (3, 4)], 1),
    ("broadcast_in_dim",
     lambda w: lax.broadcast_in_dim(w, (2, 3, 4), (1, 2)), [(1, 4)], 0),
    ("reduce_sum", lambda w: jnp.sum(w, axis=(0, 2)), [(2, 3, 4)], 0),
    ("reshape", lambda w: w.reshape(6, 2), [(3, 4)], 0),
    ("transpose", lambda w: lax.transpose(w, (2, 0, 1)), [(2, 3, 4)], 0),
    ("squeeze", lambda w: lax.squeeze(w, (1,)), [(3, 1, 4)], 0),
    ("pad", lambda w: lax.pad(w, 0., ((1, 2, 0), (0, 1, 0))), [(3, 4)], 0),
    ("pad", lambda w: lax.pad(w, 0., ((1, 0, 1), (0, 1, 0))), [(3, 4)], 0),
    ("concatenate", lambda x, w: lax.concatenate([x, w], 1),
     [(3, 2), (3, 4)], 1),
    ("dot_general", lambda x, w: x @ w, [(2, 3), (3, 4)], 1),
    ("dot_general", lambda w, x: jnp.einsum("bij,bjk->bki", w, x),
     [(2, 3, 4), (2, 4, 5)], 0),
    ("conv_general_dilated",
     lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME"),
     [(2, 3, 5, 5), (4, 3, 3, 3)], 1),
]


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_jacobian_rule_matches_jacfwd(case):
  name, fn, shapes, pos = CASES[case]
  args = [jax.random.normal(K[i], s) for i, s in enumerate(shapes)]
  if name == "div":  # keep denominators away from zero
    args[1] = args[1] + 3.
  eqn, invals = _single_eqn(fn, args, name)
  y = jaxpr_eval.bind(eqn, invals)[0]
  df = jax.random.normal(K[7], (2,) + y.shape)
  got = structured_rules.jacobian([df], eqn, invals, pos, 1)
  np.testing.assert_allclose(got, _ref_jacobian(df, eqn, invals, pos),
                             rtol=1e-5, atol=1e-5)
  if name in structured_rules.MJJMP_RULES:
    # The MJJMP rule equals contracting the two Jacobians.
    args2 = [a if i == pos else jax.random.normal(K[5], a.shape)
             for i, a in enumerate(invals)]
    df2 = jax.random.normal(K[6], (3,) + y.shape)
    j1 = _ref_jacobian(df, eqn, invals, pos)
    j2 = _ref_jacobian(df2, eqn, args2, pos)
    ref = _common.contract(j1, j2, 1, (), ())
    mj = structured_rules.MJJMP_RULES[name](df, df2, invals, args2, pos,
                                            eqn.params, [0], [1], [0, 1],
                                            None, None)
    np.testing.assert_allclose(mj, ref, rtol=1e-4, atol=1e-4)


def test_analysis_passes_through_transpose_and_scale():
  w = jnp.ones((3, 4))

  def f(pl, x):
    (w,) = pl
    return x @ (2. * w.T.reshape(4, 3)).T

  closed = jax.make_jaxpr(f)([w], jnp.ones((2, 3)))
  plan = structured.analyze(closed, 1)
  assert list(plan.leaf_uses) == [0]
  (key, pos, scale), = plan.leaf_uses[0]
  assert plan.sites[key].eqn.primitive.name == "dot_general"
  assert float(scale) == 2.


def test_analysis_shared_parameter_has_two_sites():
  def f(pl, x):
    (w,) = pl
    return jnp.tanh(x @ w) @ w

  closed = jax.make_jaxpr(f)([jnp.ones((3, 3))], jnp.ones((2, 3)))
  plan = structured.analyze(closed, 1)
  assert len(plan.leaf_uses[0]) == 2


def test_analysis_recurses_into_jit():
  inner = jax.jit(lambda x, w: x @ w)

  def f(pl, x):
    return inner(x, pl[0])

  closed = jax.make_jaxpr(f)([jnp.ones((3, 3))], jnp.ones((2, 3)))
  plan = structured.analyze(closed, 1)
  (key, _, _), = plan.leaf_uses[0]
  assert len(key) == 2  # inside the jit call
  assert plan.sites[key].eqn.primitive.name == "dot_general"
