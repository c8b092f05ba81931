"""Small models and an independent reference NTK for the empirical tests."""
import jax
import jax.numpy as jnp
import numpy as np


def reference_ntk(f, params, x1, x2, trace_axes, diagonal_axes, **kw):
  """Full ``J(x1) J(x2)^T`` from `jax.jacobian` on the whole batch, then
  traces/diagonals taken one axis pair at a time (numpy)."""
  x2 = x1 if x2 is None else x2
  j1 = jax.jacobian(lambda p: f(p, x1, **kw))(params)
  j2 = jax.jacobian(lambda p: f(p, x2, **kw))(params)
  fx1 = jax.eval_shape(lambda: f(params, x1, **kw))
  leaves1 = jax.tree_util.tree_leaves(fx1)
  j1s = jax.tree_util.tree_structure(fx1).flatten_up_to(j1)
  j2s = jax.tree_util.tree_structure(fx1).flatten_up_to(j2)
  out = []
  for o, a, b in zip(leaves1, j1s, j2s):
    nd = len(o.shape)
    theta = 0.
    for pa, pb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      pa = np.asarray(pa).reshape(pa.shape[:nd] + (-1,))
      pb = np.asarray(pb).reshape(pb.shape[:nd] + (-1,))
      theta = theta + np.tensordot(pa, pb, (-1, -1))
    out.append(reduce_axes(np.asarray(theta), nd, trace_axes, diagonal_axes))
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(fx1), out)


def reduce_axes(theta, nd, trace_axes, diagonal_axes):
  trace = {a % nd for a in trace_axes}
  diag = {a % nd for a in diagonal_axes}
  perm = [a for i in range(nd) for a in (i, nd + i)]
  t = np.transpose(theta, perm)
  for i in reversed(range(nd)):
    if i in trace:
      t = np.trace(t, axis1=2 * i, axis2=2 * i + 1) / t.shape[2 * i]
    elif i in diag:
      t = np.moveaxis(np.diagonal(t, axis1=2 * i, axis2=2 * i + 1), -1, 2 * i)
  return t


def _normal(key, shape, scale=1.):
  return scale * jax.random.normal(key, shape) / np.sqrt(np.prod(shape[:-1]))


def add_bias(y, b):
  """``y + b`` over y's trailing axis, broadcast explicitly (the suite runs
  under ``jax_numpy_rank_promotion='raise'``, as many users do)."""
  return y + jnp.broadcast_to(b, y.shape)


def fc():
  """Dense-tanh-Dense(3) with biases."""
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {"w1": _normal(k[0], (4, 8)), "b1": jax.random.normal(k[1], (8,)),
            "w2": _normal(k[2], (8, 3)), "b2": jax.random.normal(k[3], (3,))}

  def f(p, x):
    h = jnp.tanh(add_bias(x @ p["w1"], 0.5 * p["b1"]))
    return add_bias(h @ p["w2"], p["b2"])
  return f, params, (5, 4), (3, 4)


def cnn():
  """lax conv (NHWC/HWIO) -> relu -> 2x2 average pool -> flatten -> dense."""
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  params = (_normal(k[0], (3, 3, 2, 4)), jnp.zeros((4,)) + 0.1,
            _normal(k[1], (4 * 3 * 3, 2)))

  def f(p, x):
    w, b, d = p
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO",
                                                        "NHWC"))
    y = jax.nn.relu(add_bias(y, b))
    y = jax.lax.reduce_window(y, 0., jax.lax.add, (1, 2, 2, 1),
                              (1, 2, 2, 1), "VALID") / 4.
    return y.reshape(y.shape[0], -1) @ d
  return f, params, (3, 6, 6, 2), (2, 6, 6, 2)


def attention():
  """Single-head self-attention over T tokens, mean-pooled, dense."""
  k = jax.random.split(jax.random.PRNGKey(2), 4)
  params = [_normal(k[i], (5, 5)) for i in range(3)] + [_normal(k[3], (5, 2))]

  def f(p, x):
    wq, wk, wv, wo = p
    q, kk, v = x @ wq, x @ wk, x @ wv
    a = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, kk) / np.sqrt(5.), -1)
    return jnp.mean(jnp.einsum("nts,nsd->ntd", a, v), 1) @ wo
  return f, params, (3, 4, 5), (2, 4, 5)


def shared():
  """Weight sharing, a transposed and a scaled parameter, a param-only
  product: exercises pass-through and multi-use sites."""
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  params = (_normal(k[0], (4, 4)), _normal(k[1], (4, 2)), jnp.ones((2,)))

  def f(p, x):
    w, v, s = p
    h = jnp.sin(x @ w) @ (2. * w.T)
    return (h @ (w @ v)) * s[None]
  return f, params, (4, 4), (2, 4)


def pytree():
  """Dict inputs, tuple/dict outputs, nested params."""
  k = jax.random.split(jax.random.PRNGKey(4), 3)
  params = {"a": [_normal(k[0], (3, 4))], "b": (_normal(k[1], (2, 4)),)}

  def f(p, x):
    h = jnp.tanh(x["u"] @ p["a"][0] + x["v"] @ p["b"][0])
    return (h[:, :2], {"c": h.sum(-1, keepdims=True) * h})
  return f, params, None, None


def pytree_inputs(n):
  k1, k2 = jax.random.split(jax.random.PRNGKey(n))
  return {"u": jax.random.normal(k1, (n, 3)), "v": jax.random.normal(k2, (n, 2))}


MODELS = {"fc": fc, "cnn": cnn, "attention": attention, "shared": shared}


def inputs(shape, seed):
  return jax.random.normal(jax.random.PRNGKey(100 + seed), shape)
