"""Finite networks trained by gradient descent, to check predictions against.

Full-batch gradient descent on the loss ``0.5 * mean((f - y)^2)`` (the
normalization `widenets.predict` uses: ``||f - y||^2 / (2 y.size)``), so that
``steps`` steps at learning rate ``lr`` correspond to ``t = steps`` with
``learning_rate=lr``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def ravel_pytree(tree):
  """``(flat vector, unravel)`` of a pytree of arrays."""
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  shapes = [x.shape for x in leaves]
  sizes = [x.size for x in leaves]

  def unravel(flat):
    out, i = [], 0
    for shape, size in zip(shapes, sizes):
      out.append(flat[i:i + size].reshape(shape))
      i += size
    return jax.tree_util.tree_unflatten(treedef, out)
  return jnp.concatenate([x.reshape(-1) for x in leaves]), unravel


def mse(f, y):
  return 0.5 * jnp.mean((f - y) ** 2)


def train(apply_fn, params, x_train, y_train, x_test, lr, steps, record,
          momentum=None):
  """Outputs on train and test after each number of steps in ``record``.

  Returns ``(f_train, f_test)`` with a leading axis over ``record``.
  """
  record = tuple(int(s) for s in record)

  def loss(p):
    return mse(apply_fn(p, x_train), y_train)

  grad = jax.grad(loss)

  def step(state, _):
    p, v = state
    g = grad(p)
    if momentum is None:
      p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
    else:
      v = jax.tree_util.tree_map(lambda a, b: momentum * a - lr * b, v, g)
      p = jax.tree_util.tree_map(lambda a, b: a + b, p, v)
    return (p, v), None

  @jax.jit
  def run(params):
    outs, done = [], 0
    state = (params, jax.tree_util.tree_map(jnp.zeros_like, params))
    for s in record:
      state, _ = jax.lax.scan(step, state, None, length=s - done)
      done = s
      outs.append((apply_fn(state[0], x_train), apply_fn(state[0], x_test)))
    return (jnp.stack([o[0] for o in outs]), jnp.stack([o[1] for o in outs]))

  return run(params)


def train_ensemble(init_fn, apply_fn, key, n_nets, x_train, y_train, x_test,
                   lr, record, input_shape=None):
  """``train`` for ``n_nets`` independent initializations (vmapped)."""
  input_shape = input_shape or (-1,) + x_train.shape[1:]
  keys = jax.random.split(key, n_nets)

  def one(k):
    _, params = init_fn(k, input_shape)
    return train(apply_fn, params, x_train, y_train, x_test, lr,
                 record[-1], record)

  return jax.jit(jax.vmap(one))(keys)


def empirical_ntk(apply_fn, params, x1, x2):
  """``J(x1) J(x2)^T`` summed over parameters, traced over outputs."""
  def flat_jac(x):
    flat, unravel = ravel_pytree(params)
    j = jax.jacobian(lambda w: apply_fn(unravel(w), x))(flat)
    return j.reshape(x.shape[0], -1, flat.size)      # (N, out, P)
  @jax.jit
  def ntk(x1, x2):
    j1, j2 = flat_jac(x1), flat_jac(x2)
    return jnp.einsum("iop,jop->ij", j1, j2) / j1.shape[1]
  return ntk(x1, x2)


def linearize(apply_fn, params):
  """The first-order Taylor expansion of ``apply_fn`` around ``params``."""
  def f_lin(p, x):
    dp = jax.tree_util.tree_map(lambda a, b: a - b, p, params)
    f0, df = jax.jvp(lambda w: apply_fn(w, x), (params,), (dp,))
    return f0 + df
  return f_lin
