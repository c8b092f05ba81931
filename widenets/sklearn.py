"""scikit-learn estimators backed by infinite-width kernels.

`KernelRegressor` and `KernelClassifier` fit the infinite ensemble of
infinitely wide networks trained by gradient flow on MSE
(``predict.gradient_descent_mse_ensemble``): at ``t=None`` (infinite time)
this is NNGP / NTK kernel regression, at finite ``t`` early-stopped training.
They pass ``sklearn.utils.estimator_checks.check_estimator`` and work in
``Pipeline`` and ``GridSearchCV``.

The architecture is a spec string (see `widenets.spec`) or a stax triple.
scikit-learn gives 2-D ``X``; ``input_shape`` reshapes each row (e.g.
``(8, 8, 1)`` for a CNN on flattened 8x8 images).

Uncertainty: the ensemble's outputs are Gaussian. ``predict(X,
return_std=True)`` gives its standard deviation (of the network output, no
observation noise); the classifier's ``predict_proba`` is the probability
that each class has the largest output under that Gaussian (outputs are
independent across classes with a shared variance ``sigma^2``), computed by
Gauss-Hermite quadrature; ``predict_outputs`` gives the raw outputs (and
``sigma``). There is no ``decision_function``: a score consistent with these
probabilities would be the outputs in units of ``sigma``, which is
ill-conditioned where ``sigma`` is round-off (at training points).

Precision: by default (``x64=True``) kernels and solves run in float64 inside
`jax.enable_x64`, so predictions do not depend on which other rows are in the
batch (float32 kernels differ by round-off that ill-conditioned solves
amplify); ``x64=False`` is faster for large CNN kernels.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Optional

import jax
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .buckets import bucketed

try:  # scikit-learn >= 1.6
  from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
  def _validate_data(est, *args, **kwargs):
    return est._validate_data(*args, **kwargs)

__all__ = ["KernelRegressor", "KernelClassifier", "DEFAULT_ARCHITECTURE"]

_AFFINE = "W_std=1.5, b_std=0.05"
DEFAULT_ARCHITECTURE = (f"Dense(512, {_AFFINE}) Relu Dense(512, {_AFFINE}) "
                        f"Relu Dense(1, {_AFFINE})")
# Test rows per covariance block: the diagonal of an (m, m) block is all we
# keep, so blocks bound the cost at O(n m) kernel entries instead of O(n^2).
_COV_BLOCK = 128


@functools.lru_cache(maxsize=32)
def _parsed(spec_string: str):
  # One triple per spec: its kernel_fn's compiled computations are reused
  # by every fit/predict (parsing anew would recompile each time).
  from . import spec
  return spec.parse(spec_string)


@functools.lru_cache(maxsize=32)
def _fitted(spec_string: str, values: tuple):
  """The spec's network with fitted shared ``W_std``/``b_std``."""
  from .hyperparameters import from_spec
  return from_spec(spec_string)[0](dict(values))


def _padded(kernel_fn):
  """``kernel_fn`` on inputs padded to a few sizes (`buckets`), so that
  fits and predictions on varying numbers of rows compile few programs;
  returns NumPy arrays (``get`` a string) or `_Kernels`."""
  fn = bucketed(kernel_fn)

  def padded(x1, x2=None, get=None, **kwargs):
    k = fn(np.asarray(x1), None if x2 is None else np.asarray(x2), get,
           **kwargs)
    if isinstance(get, str):
      return np.asarray(k)
    return _Kernels(**{g: np.asarray(getattr(k, g)) for g in get})

  return padded


class _Kernels:
  """``kernel_fn`` results with ``nngp``/``ntk`` attributes."""

  def __init__(self, **kw):
    self.__dict__.update(kw)


class _KernelMixin:
  """Shared fitting and Gaussian prediction (used by both estimators)."""

  # Shared by both estimators; scikit-learn reads the parameters from this
  # signature (get_params / set_params / clone).
  def __init__(self, architecture: Any = None, kernel: str = "ntk",
               t: Optional[float] = None, diag_reg: float = 1e-4,
               diag_reg_absolute_scale: bool = False,
               input_shape: Optional[tuple] = None, batch_size: int = 0,
               x64: bool = True, fit_hyperparameters: bool = False):
    self.architecture = architecture
    self.kernel = kernel
    self.t = t
    self.diag_reg = diag_reg
    self.diag_reg_absolute_scale = diag_reg_absolute_scale
    self.input_shape = input_shape
    self.batch_size = batch_size
    self.x64 = x64
    self.fit_hyperparameters = fit_hyperparameters

  def _check_params(self):
    if self.kernel not in ("nngp", "ntk"):
      raise ValueError(f"kernel must be 'nngp' or 'ntk'; got "
                       f"{self.kernel!r}.")
    t = self.t
    if t is not None and (not isinstance(t, numbers.Real) or t < 0 or
                          np.isnan(t)):
      raise ValueError(f"t must be None (infinite time) or a number >= 0; "
                       f"got {t!r}.")
    if not isinstance(self.diag_reg, numbers.Real) or self.diag_reg < 0:
      raise ValueError(f"diag_reg must be a number >= 0; got "
                       f"{self.diag_reg!r}.")

  def _network_kernel_fn(self):
    arch = DEFAULT_ARCHITECTURE if self.architecture is None else \
        self.architecture
    if getattr(self, "hyperparameters_", None) is not None:
      net = _fitted(arch, tuple(self.hyperparameters_.items()))
    else:
      net = _parsed(arch) if isinstance(arch, str) else arch
    if not (isinstance(net, tuple) and len(net) == 3 and callable(net[2])):
      raise ValueError(f"architecture must be a spec string or an (init_fn, "
                       f"apply_fn, kernel_fn) triple; got {type(arch)}.")
    kernel_fn = net[2]
    if self.batch_size:
      from .batching import batch
      kernel_fn = batch(kernel_fn, self.batch_size)
    return _padded(kernel_fn)

  def _dtype(self):
    return np.float64 if self.x64 else np.float32

  def _inputs(self, X) -> np.ndarray:
    X = np.asarray(X, self._dtype())
    if self.input_shape is None:
      return X
    shape = tuple(self.input_shape)
    if int(np.prod(shape)) != X.shape[1]:
      raise ValueError(f"input_shape {shape} needs {int(np.prod(shape))} "
                       f"features per sample; X has {X.shape[1]}.")
    return X.reshape((X.shape[0],) + shape)

  def _gets(self):
    return ("nngp", "ntk") if self.kernel == "ntk" else ("nngp",)

  def _fit_targets(self, X, targets):
    self._check_params()
    self.hyperparameters_ = None
    if self.fit_hyperparameters:
      self._fit_evidence(X, targets)
    kernel_fn = self._network_kernel_fn()
    with jax.enable_x64(bool(self.x64)):
      k = kernel_fn(self._inputs(X), None, self._gets())
    self.X_fit_ = np.asarray(X, self._dtype())
    self.targets_ = np.asarray(targets, self._dtype())
    # Plain arrays only, so that fitted estimators pickle.
    self.k_train_train_ = {g: np.asarray(getattr(k, g)) for g in self._gets()}
    return self

  def _fit_evidence(self, X, targets):
    """Fits the spec's shared ``W_std``/``b_std`` and the noise by the
    marginal likelihood of ``targets`` (`widenets.fit_hyperparameters`)."""
    from .hyperparameters import fit_hyperparameters, from_spec
    arch = DEFAULT_ARCHITECTURE if self.architecture is None else \
        self.architecture
    if not isinstance(arch, str):
      raise ValueError("fit_hyperparameters=True needs a spec-string "
                       "architecture (its W_std/b_std are fitted); got "
                       f"{type(arch).__name__}.")
    build, init = from_spec(arch)
    noise = 0.1 * float(np.mean(np.square(targets))) + 1e-6
    res = fit_hyperparameters(build, init, self._inputs(X), targets,
                              noise=noise, get=self.kernel, x64=self.x64)
    self.hyperparameters_ = dict(res.values)
    self.diag_reg_ = res.noise
    self.evidence_ = res.objective

  def _predictor(self):
    """``predict.gradient_descent_mse_ensemble`` on the cached train kernel."""
    from . import predict
    base = self._network_kernel_fn()
    x_train = self._inputs(self.X_fit_)
    cached = self.k_train_train_

    def kernel_fn(x1, x2=None, get=None, **kwargs):
      if (x2 is None and x1.shape == x_train.shape and
          np.array_equal(np.asarray(x1), x_train)):
        if isinstance(get, str):
          return cached[get]
        return _Kernels(**{g: cached[g] for g in get})
      return base(x1, x2, get, **kwargs)

    fitted = getattr(self, "hyperparameters_", None) is not None
    return predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, self.targets_,
        diag_reg=self.diag_reg_ if fitted else self.diag_reg,
        diag_reg_absolute_scale=fitted or self.diag_reg_absolute_scale)

  def _gaussian(self, X, return_std: bool):
    """Mean ``(n, outputs)`` and, if asked, std ``(n,)`` on rows of ``X``."""
    check_is_fitted(self, "k_train_train_")
    X = _validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
    t = None if self.t is None or np.isinf(self.t) else float(self.t)
    with jax.enable_x64(bool(self.x64)):
      x = self._inputs(X)
      fn = self._predictor()
      if not return_std:
        return np.asarray(fn(t, x, self.kernel), np.float64), None
      means, stds = [], []
      for s in range(0, x.shape[0], _COV_BLOCK):
        mean, cov = fn(t, x[s:s + _COV_BLOCK], self.kernel, compute_cov=True)
        var = np.diagonal(np.asarray(cov, np.float64))
        means.append(np.asarray(mean, np.float64))
        # round-off can leave tiny negative variances at train points
        stds.append(np.sqrt(np.maximum(var, 0.)))
    return np.concatenate(means), np.concatenate(stds)


class KernelRegressor(_KernelMixin, RegressorMixin, BaseEstimator):
  """Regression by an infinite ensemble of infinitely wide networks.

  Args:
    architecture: spec string (e.g. ``"Dense(512) Relu Dense(1)"``) or a stax
      ``(init_fn, apply_fn, kernel_fn)`` triple; None for
      `DEFAULT_ARCHITECTURE` (a 2-hidden-layer ReLU network).
    kernel: ``'ntk'`` (all layers trained by gradient descent) or ``'nngp'``
      (readout only / Bayesian posterior).
    t: training time in ``predict`` units (learning rate 1, loss
      ``mean((f - y)**2) / 2``); None for infinite time.
    diag_reg: diagonal regularizer, relative to the mean diagonal of the
      train kernel unless ``diag_reg_absolute_scale``.
    diag_reg_absolute_scale: see ``diag_reg``.
    input_shape: per-sample shape each row of ``X`` is reshaped to.
    batch_size: kernel block size (`widenets.batch`); 0 for one block.
    x64: compute in float64 (see the module docstring).
    fit_hyperparameters: before fitting, choose the spec's shared
      ``W_std`` / ``b_std`` and the noise variance by maximizing the
      marginal likelihood of the training targets under the ``kernel``
      (`widenets.fit_hyperparameters`; needs optax). ``diag_reg`` is then
      the fitted absolute noise.

  Attributes:
    X_fit_, targets_: the training data (float32).
    k_train_train_: ``{'nngp': (n, n)[, 'ntk': (n, n)]}`` train kernels.
    n_features_in_: number of features seen in ``fit``.
    hyperparameters_, diag_reg_, evidence_: with ``fit_hyperparameters``,
      the fitted ``{'W_std', 'b_std'}``, absolute noise and evidence
      (``hyperparameters_`` is None otherwise).
  """

  def __sklearn_tags__(self):
    tags = super().__sklearn_tags__()
    tags.target_tags.multi_output = True
    tags.target_tags.single_output = True
    return tags

  def _more_tags(self):  # scikit-learn < 1.6
    return {"multioutput": True}

  def fit(self, X, y):
    """Computes and stores the train kernel(s) of ``X`` (``(n, d)``)."""
    X, y = _validate_data(self, X, y, multi_output=True, y_numeric=True,
                          dtype=[np.float64, np.float32])
    y = np.asarray(y, np.float64)
    self._y_1d = y.ndim == 1
    return self._fit_targets(X, y.reshape(len(y), -1))

  def predict(self, X, return_std: bool = False):
    """Mean prediction ``(n,)`` (or ``(n, outputs)``); with ``return_std``
    also the ensemble's standard deviation, same shape."""
    mean, std = self._gaussian(X, return_std)
    if self._y_1d:
      mean = mean[:, 0]
    elif std is not None:
      std = np.repeat(std[:, None], mean.shape[1], axis=1)
    return mean if std is None else (mean, std)


class KernelClassifier(_KernelMixin, ClassifierMixin, BaseEstimator):
  """Classification by regression on centered one-hot targets with an
  infinite ensemble of infinitely wide networks (Lee et al. 2018; Novak et
  al. 2019). Arguments as `KernelRegressor`.

  Attributes:
    classes_: the class labels.
    X_fit_, targets_, k_train_train_, n_features_in_: as `KernelRegressor`.
  """

  def fit(self, X, y):
    """Fits on ``X (n, d)`` and labels ``y (n,)``."""
    X, y = _validate_data(self, X, y, dtype=[np.float64, np.float32])
    check_classification_targets(y)
    enc = LabelEncoder()
    codes = enc.fit_transform(y)
    self.classes_ = enc.classes_
    c = len(self.classes_)
    targets = np.eye(c)[codes] - 1.0 / c
    return self._fit_targets(X, targets)

  def _scores(self, X):
    mean, std = self._gaussian(X, True)
    # A floor on sigma keeps the probabilities defined where the posterior
    # is sharp (at training points sigma is round-off).
    scale = np.sqrt(np.mean(np.diagonal(self.k_train_train_["nngp"])))
    return mean, np.maximum(std, 1e-6 * max(scale, 1e-30))

  def predict_outputs(self, X, return_std: bool = False):
    """The ensemble's mean outputs ``(n, classes)`` (regression on centered
    one-hot targets); with ``return_std`` also their std ``(n,)`` (the same
    for every class)."""
    mean, std = self._gaussian(X, return_std)
    return mean if std is None else (mean, std)

  def predict(self, X):
    """The class with the largest mean output."""
    mean, _ = self._gaussian(X, False)
    return self.classes_[np.argmax(mean, axis=1)]

  def predict_proba(self, X):
    """``P(class c has the largest output)`` under the ensemble's Gaussian,
    ``(n, classes)``; rows sum to 1."""
    from scipy.special import ndtr
    mean, std = self._scores(X)
    c = mean.shape[1]
    if c == 1:
      return np.ones((mean.shape[0], 1))
    if c == 2:
      p1 = ndtr((mean[:, 1] - mean[:, 0]) / (np.sqrt(2.) * std))
      return np.stack([1 - p1, p1], axis=1)
    # P(c max) = E_z prod_{k != c} Phi((mu_c - mu_k) / sigma + z), z ~ N(0,1)
    z, w = np.polynomial.hermite_e.hermegauss(48)
    w = w / w.sum()
    a = (mean[:, :, None] - mean[:, None, :]) / std[:, None, None]  # (n,c,k)
    phi = ndtr(a[..., None] + z)                                  # (n,c,k,q)
    idx = np.arange(c)
    phi[:, idx, idx, :] = 1.0
    p = np.einsum("ncq,q->nc", np.prod(phi, axis=2), w)
    return p / p.sum(axis=1, keepdims=True)
