"""Any stax network's kernel as a scikit-learn Gaussian-process `Kernel`.

`NetworkKernel(build, values)` wraps ``build(values)[2]`` (a stax
``kernel_fn``; ``values`` a flat dict of positive hyperparameters such as
``{'W_std': 1.5, 'b_std': 0.05}``) as a
`sklearn.gaussian_process.kernels.Kernel`: named `Hyperparameter` objects
with bounds, ``theta`` in log space as scikit-learn expects, and
``eval_gradient`` computed analytically by `jax.jacfwd` through the
kernel. It therefore works with::

    GaussianProcessRegressor(kernel=NetworkKernel(build, hp) + WhiteKernel())
    GaussianProcessClassifier(kernel=NetworkKernel(build, hp))
    KernelRidge(kernel=NetworkKernel(build, hp))
    SVC(kernel="precomputed").fit(NetworkKernel(build, hp)(X), y)

and with ``get_params`` / ``set_params`` / `sklearn.base.clone` and kernel
arithmetic (``+``, ``*``, ``**``). `from_spec` makes one from a spec string
with shared ``W_std`` / ``b_std``.

scikit-learn is an optional dependency (``widenets[sklearn]``).
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

__all__ = ["NetworkKernel", "from_spec"]


@functools.lru_cache(maxsize=64)
def _compiled(build: Callable, free: tuple, get: str, x64: bool):
  """Jitted ``(K, dK/dtheta)`` and ``K`` functions of the free log-values.

  Cached per (build, free names, get) so that scikit-learn's optimizer,
  which sets ``theta`` and calls the kernel many times, compiles once per
  input shape.
  """

  def kernel(theta, fixed, x1, x2):
    values = dict(fixed, **{n: jnp.exp(t) for n, t in zip(free, theta)})
    return build(values)[2](x1, x2, get)

  def with_jac(theta, fixed, x1):
    k = kernel(theta, fixed, x1, None)
    jac = jax.jacfwd(kernel)(theta, fixed, x1, None)      # (n, n, p)
    return k, jac

  def diag(theta, fixed, x1):
    one = lambda xi: kernel(theta, fixed, xi[None], None)[0, 0]
    return jax.vmap(one)(x1)

  return jax.jit(kernel), jax.jit(with_jac), jax.jit(diag)


def _check_values(values, where: str) -> None:
  if not isinstance(values, dict) or not values:
    raise ValueError(f"{where}: values must be a non-empty dict of "
                     f"hyperparameters, e.g. {{'W_std': 1.5, 'b_std': "
                     f"0.05}}; got {values!r}.")
  for name, v in values.items():
    if not isinstance(name, str) or "__" in name:
      raise ValueError(f"{where}: hyperparameter names must be strings "
                       f"without '__' (scikit-learn's separator); got "
                       f"{name!r}.")
    if not isinstance(v, numbers.Real) or not (math.isfinite(v) and v > 0):
      raise ValueError(f"{where}: values[{name!r}] = {v!r} must be a finite "
                       f"number > 0 (theta is its logarithm).")


def _check_bounds(bounds, where: str) -> None:
  if isinstance(bounds, str):
    if bounds != "fixed":
      raise ValueError(f"{where}: value_bounds {bounds!r} must be 'fixed' or a "
                       f"(low, high) pair.")
    return
  try:
    lo, hi = bounds
    lo, hi = float(lo), float(hi)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: value_bounds must be a (low, high) pair or "
                     f"'fixed'; got {bounds!r}.") from None
  if not (0 < lo < hi):
    raise ValueError(f"{where}: value_bounds {bounds!r} must satisfy 0 < low < "
                     f"high (hyperparameters are positive; theta = log).")


class NetworkKernel(Kernel):
  """A stax network's NNGP or NTK as a scikit-learn kernel.

  Args:
    build: ``values -> (init_fn, apply_fn, kernel_fn)``, e.g.
      ``widenets.hyperparameters.dense_network(3)``.
    values: ``{name: value}`` positive hyperparameters passed to ``build``.
    value_bounds: ``(low, high)`` for every hyperparameter, ``'fixed'``, or a
      dict ``{name: (low, high) or 'fixed'}`` (missing names: ``(1e-5,
      1e5)``).
    get: ``'nngp'`` or ``'ntk'``.
    input_shape: per-sample shape each row of ``X`` is reshaped to.
    x64: compute in float64 (inside ``jax.enable_x64``).

  ``theta`` is ``log(values)`` of the non-fixed hyperparameters in the
  order of ``values``; ``K_gradient[..., i] = dK / dtheta_i``.
  """

  def __init__(self, build: Callable, values: dict,
               value_bounds: Any = (1e-5, 1e5),
               get: str = "nngp", input_shape: Optional[tuple] = None,
               x64: bool = True):
    where = "NetworkKernel"
    _check_values(values, where)
    if isinstance(value_bounds, dict):
      unknown = set(value_bounds) - set(values)
      if unknown:
        raise ValueError(f"{where}: value_bounds name unknown hyperparameters "
                         f"{sorted(unknown)}; known: {list(values)}.")
      for b in value_bounds.values():
        _check_bounds(b, where)
    else:
      _check_bounds(value_bounds, where)
    if get not in ("nngp", "ntk"):
      raise ValueError(f"{where}: get must be 'nngp' or 'ntk'; got {get!r}.")
    # Stored unchanged: scikit-learn's clone checks the identity of params.
    self.build = build
    self.values = values
    self.value_bounds = value_bounds
    self.get = get
    self.input_shape = input_shape
    self.x64 = x64

  # -- hyperparameters -----------------------------------------------------

  def _bounds_of(self, name: str):
    vb = self.value_bounds
    return vb.get(name, (1e-5, 1e5)) if isinstance(vb, dict) else vb

  @property
  def hyperparameters(self):
    out = []
    for name in self.values:
      b = self._bounds_of(name)
      fixed = isinstance(b, str)
      out.append(Hyperparameter(name, "numeric", "fixed" if fixed else
                                np.array([float(b[0]), float(b[1])]),
                                fixed=fixed))
    return out

  def _free(self) -> tuple:
    return tuple(n for n in self.values
                 if not isinstance(self._bounds_of(n), str))

  @property
  def theta(self) -> np.ndarray:
    return np.log(np.array([self.values[n] for n in self._free()], float))

  @theta.setter
  def theta(self, theta) -> None:
    theta = np.asarray(theta, float).reshape(-1)
    free = self._free()
    if theta.shape[0] != len(free):
      raise ValueError(f"NetworkKernel: theta has {theta.shape[0]} entries; "
                       f"expected {len(free)} ({list(free)}).")
    values = dict(self.values)
    values.update({n: float(np.exp(t)) for n, t in zip(free, theta)})
    self.values = values

  # -- evaluation ----------------------------------------------------------

  def _inputs(self, X) -> np.ndarray:
    X = np.asarray(X, np.float64 if self.x64 else np.float32)
    if self.input_shape is not None:
      X = X.reshape((X.shape[0],) + tuple(self.input_shape))
    return X

  def _fns(self):
    return _compiled(self.build, self._free(), self.get, bool(self.x64))

  def _fixed(self) -> dict:
    free = self._free()
    return {n: v for n, v in self.values.items() if n not in free}

  def __call__(self, X, Y=None, eval_gradient: bool = False):
    """``K(X, Y)`` ``(n_X, n_Y)``; with ``eval_gradient`` also
    ``dK/dtheta`` ``(n_X, n_X, n_theta)`` (only for ``Y=None``)."""
    if eval_gradient and Y is not None:
      raise ValueError("NetworkKernel: eval_gradient is only defined for "
                       "Y=None.")
    kernel, with_jac, _ = self._fns()
    with jax.enable_x64(bool(self.x64)):
      x1 = self._inputs(X)
      x2 = None if Y is None else self._inputs(Y)
      theta = jnp.asarray(self.theta)
      if eval_gradient:
        k, jac = with_jac(theta, self._fixed(), x1)
        return np.array(k, np.float64), np.array(jac, np.float64)
      return np.array(kernel(theta, self._fixed(), x1, x2), np.float64)

  def diag(self, X) -> np.ndarray:
    """``K(X, X)``'s diagonal ``(n_X,)`` without the off-diagonal entries."""
    _, _, diag = self._fns()
    with jax.enable_x64(bool(self.x64)):
      return np.array(diag(jnp.asarray(self.theta), self._fixed(),
                             self._inputs(X)), np.float64)

  def is_stationary(self) -> bool:
    return False

  def __repr__(self) -> str:
    vals = ", ".join(f"{n}={v:.3g}" for n, v in self.values.items())
    return f"NetworkKernel({vals}, get={self.get!r})"


def from_spec(spec: str, **kwargs) -> NetworkKernel:
  """`NetworkKernel` of a spec string with shared ``W_std`` / ``b_std``
  (see `widenets.hyperparameters.from_spec`); kwargs as `NetworkKernel`."""
  from .hyperparameters import from_spec as build_from_spec
  build, init = build_from_spec(spec)
  return NetworkKernel(build, init, **kwargs)
