r"""Gradient descent (with momentum) for any loss, by an ODE solve.

A linearized network trained by gradient flow on a loss :math:`L(f, y)` moves
its outputs by the kernel:

.. math::
  \dot f_{train} = -\eta\,K\,\nabla_f L(f_{train}),\qquad
  \dot f_{test} = -\eta\,K_*\,\nabla_f L(f_{train}).

With ``momentum`` :math:`m` (heavy ball, the continuous limit of
``v <- m v - eta grad; f <- f + v``), time runs in units of
:math:`\sqrt\eta` and the state gains velocities ``q``:

.. math::
  \dot f = q,\qquad \dot q = -K\,\nabla_f L - \frac{1 - m}{\sqrt\eta} q.

`ODEState` holds ``(fx_train, fx_test, qx_train, qx_test)``; passing one to
``predict_fn`` returns one, so training can be resumed exactly. The ODE is
solved by `widenets.predict.odeint` (adaptive Dormand-Prince; jit-friendly).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ..kernel import pytree_dataclass
from . import validation
from ._common import (ArrayOrScalar, Axes, Layout, check_fx, check_test_train,
                      check_train, is_concrete, to_2d)
from .odeint import odeint

__all__ = ["ODEState", "gradient_descent", "max_learning_rate"]


@pytree_dataclass
class ODEState:
  """The ODE state: outputs and auxiliary (momentum) variables.

  Attributes:
    fx_train: train set outputs.
    fx_test: test set outputs.
    qx_train: train set auxiliary variable (velocity, with momentum).
    qx_test: test set auxiliary variable.
  """

  fx_train: Any = None
  fx_test: Any = None
  qx_train: Any = None
  qx_test: Any = None


def _default_tol(dtype) -> float:
  # 1.4e-8 as neural-tangents' solver in float64; float32 cannot resolve it.
  return 1.4e-8 if np.dtype(dtype) == np.float64 else 1e-6


def gradient_descent(
    loss: Callable[[jax.Array, jax.Array], jax.Array],
    k_train_train: jax.Array,
    y_train: jax.Array,
    learning_rate: float = 1.,
    momentum: Optional[float] = None,
    trace_axes: Axes = (-1,),
    *,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    max_steps: int = 100_000,
) -> Callable:
  """Function-space gradient descent [with momentum] on any ``loss``.

  Args:
    loss: ``loss(fx_train, y_train) -> scalar``.
    k_train_train: train-train NTK, shape ``zip(y_train.shape,
      y_train.shape)`` without ``trace_axes``.
    y_train: targets.
    learning_rate: ``eta``. Without momentum times are in units of ``eta``;
      with momentum in units of ``sqrt(eta)`` (as in neural-tangents).
    momentum: ``None`` for plain gradient descent, else the momentum ``m``.
    trace_axes: output axes over which the kernel is ``K (x) I``.
    rtol, atol, max_steps: (additive) ODE solver tolerances (default 1.4e-8
      in float64, 1e-6 in float32) and step budget.

  Returns:
    ``predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None,
    k_test_train=None)``: train [and test] outputs at times ``t`` (any shape,
    non-decreasing when flattened; ``None`` = inf, integrated until the
    outputs stop changing), with leading axes ``t.shape``; an `ODEState` in
    gives an `ODEState` out.
  """
  validation.check_finite("gradient_descent", y_train=y_train,
                          k_train_train=k_train_train)
  validation.check_learning_rate("gradient_descent", learning_rate)
  y_train = jnp.asarray(y_train)
  k_train_train = jnp.asarray(k_train_train)
  layout = Layout(y_train.shape, trace_axes)
  check_train(k_train_train, y_train, layout)
  k2d = to_2d(k_train_train)
  dtype = k2d.dtype
  grad_loss = jax.grad(lambda fx: loss(fx, y_train))
  if momentum is not None:
    learning_rate = learning_rate ** 0.5
    friction = (momentum - 1.0) / learning_rate

  def vector_field(k_td, test_shape):
    def f(state: ODEState, t) -> ODEState:
      g = layout.flatten(grad_loss(state.fx_train))
      d_train = -layout.unflatten(k2d @ g, layout.kernel_shape)
      d_test = None
      if state.fx_test is not None:
        d_test = -layout.unflatten(k_td @ g, test_shape)
      if momentum is None:
        return ODEState(d_train, d_test)
      d_train = d_train + friction * state.qx_train
      if d_test is not None:
        d_test = d_test + friction * state.qx_test
      return ODEState(state.qx_train, state.qx_test, d_train, d_test)
    return f

  def initial_state(fx_train_or_state_0, fx_test_0, test_shape):
    if isinstance(fx_train_or_state_0, ODEState):
      s = fx_train_or_state_0
      fx_train, fx_test, qx_train, qx_test = (s.fx_train, s.fx_test,
                                              s.qx_train, s.qx_test)
    else:
      fx_train, fx_test = fx_train_or_state_0, fx_test_0
      qx_train = qx_test = None
    fx_train = (jnp.zeros(y_train.shape, dtype) if fx_train is None else
                jnp.broadcast_to(fx_train, y_train.shape).astype(dtype))
    test_out = None if test_shape is None else layout.output_shape(test_shape)
    if fx_test is not None:
      fx_test = jnp.broadcast_to(fx_test, test_out).astype(dtype)
    if momentum is None:
      if qx_train is not None or qx_test is not None:
        raise ValueError("The ODEState has momentum variables (qx_train / "
                         "qx_test) but `momentum` is None.")
    else:
      qx_train = (jnp.zeros(y_train.shape, dtype) if qx_train is None else
                  jnp.broadcast_to(qx_train, y_train.shape).astype(dtype))
      if fx_test is not None:
        qx_test = (jnp.zeros(test_out, dtype) if qx_test is None else
                   jnp.broadcast_to(qx_test, test_out).astype(dtype))
    return ODEState(fx_train, fx_test, qx_train, qx_test)

  tol = _default_tol(dtype)

  @functools.partial(jax.jit, static_argnums=3)
  def solve(k_td, state_0, ts, test_shape):
    # Jitted once per structure: repeated calls skip tracing the solver.
    return odeint(vector_field(k_td, test_shape), state_0, ts,
                  rtol=tol if rtol is None else rtol,
                  atol=tol if atol is None else atol, max_steps=max_steps)

  def predict_fn(
      t: ArrayOrScalar = None,
      fx_train_or_state_0: Any = 0.,
      fx_test_0: ArrayOrScalar = None,
      k_test_train: Optional[jax.Array] = None,
  ):
    """Outputs (or the `ODEState`) at time[s] ``t``."""
    validation.check_time("gradient_descent", t, learning_rate)
    validation.check_finite("gradient_descent", k_test_train=k_test_train,
                            fx_test_0=fx_test_0)
    is_state = isinstance(fx_train_or_state_0, ODEState)
    if is_state:
      if fx_test_0 is not None:
        raise ValueError("`fx_test_0` is part of the ODEState passed as "
                         "`fx_train_or_state_0`; pass fx_test_0=None.")
      check_fx(fx_train_or_state_0.fx_train, fx_train_or_state_0.fx_test,
               k_test_train)
    else:
      check_fx(fx_train_or_state_0, fx_test_0, k_test_train)
    test_shape, k_td = None, None
    if k_test_train is not None:
      test_shape = check_test_train(jnp.asarray(k_test_train), layout)
      k_td = to_2d(k_test_train).astype(dtype)

    times = jnp.asarray(jnp.inf if t is None else t, dtype) * learning_rate
    t_shape = times.shape
    times = times.reshape(-1)
    if is_concrete(times) and np.any(np.diff(np.asarray(times)) < 0):
      raise ValueError(f"`t` must be non-decreasing (flattened); got {t}.")
    state_0 = initial_state(fx_train_or_state_0, fx_test_0, test_shape)
    ts = jnp.concatenate([jnp.zeros((1,), dtype), times])
    states = solve(k_td, state_0, ts, test_shape)
    states = jax.tree_util.tree_map(
        lambda x: x[1:].reshape(t_shape + x.shape[1:]), states)
    if is_state:
      return states
    if fx_test_0 is None:
      return states.fx_train
    if fx_train_or_state_0 is None:
      return states.fx_test
    return states.fx_train, states.fx_test

  return predict_fn


def max_learning_rate(
    ntk_train_train: jax.Array,
    y_train_size: Optional[int] = None,
    momentum: float = 0.,
    eps: float = 1e-12,
) -> float:
  r"""Largest stable learning rate of (momentum) gradient descent on MSE.

  For the loss ``||f - y||^2 / (2 * y_train_size)``, gradient descent is stable
  while ``eta * lambda_max(NTK) / y_train_size < 2 (1 + momentum)``, so this
  returns ``2 (1 + momentum) y_train_size / (lambda_max + eps)``.
  ``y_train_size=None`` means ``ntk_train_train``'s (flat) side, i.e.
  ``trace_axes=()``. The top eigenvalue uses SciPy (optional extra ``ode``;
  current versions' ``subset_by_index``) on CPU when it is installed, else
  `jnp.linalg.eigvalsh`.
  """
  k = to_2d(ntk_train_train)
  n = k.shape[0]
  factor = n if y_train_size is None else y_train_size
  top = None
  if is_concrete(k) and jax.default_backend() == "cpu":
    try:
      import scipy.linalg
    except ImportError:
      scipy = None
    if scipy is not None:
      top = float(scipy.linalg.eigh(np.asarray(k), eigvals_only=True,
                                    subset_by_index=[n - 1, n - 1])[-1])
  if top is None:
    top = jnp.linalg.eigvalsh(k)[-1]
  return 2 * (1 + momentum) * factor / (top + eps)
