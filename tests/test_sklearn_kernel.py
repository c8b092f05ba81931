"""widenets.sklearn_kernel.NetworkKernel and KernelRegressor's
fit_hyperparameters."""
import jax
import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("optax")

from sklearn.base import clone
from sklearn.gaussian_process import (GaussianProcessClassifier,
                                      GaussianProcessRegressor)
from sklearn.gaussian_process.kernels import WhiteKernel
from sklearn.kernel_ridge import KernelRidge
from sklearn.svm import SVC

from widenets import stax
from widenets.hyperparameters import dense_network, fit_hyperparameters
from widenets.sklearn import KernelRegressor
from widenets.sklearn_kernel import NetworkKernel, from_spec

BUILD = dense_network(2)


def _data(n=24, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(n, 3)
  return x, np.sin(x[:, 0]) + 0.05 * rng.randn(n)


def test_kernel_equals_kernel_fn_and_diag():
  x, _ = _data()
  kern = NetworkKernel(BUILD, {"W_std": 1.3, "b_std": 0.2}, get="ntk")
  kernel_fn = BUILD({"W_std": 1.3, "b_std": 0.2})[2]
  with jax.enable_x64(True):
    ref = np.asarray(kernel_fn(x, None, "ntk"))
    ref12 = np.asarray(kernel_fn(x[:5], x[5:], "ntk"))
  np.testing.assert_allclose(kern(x), ref, rtol=1e-12)
  np.testing.assert_allclose(kern(x[:5], x[5:]), ref12, rtol=1e-12)
  np.testing.assert_allclose(kern.diag(x), np.diagonal(ref), rtol=1e-12)


def test_eval_gradient_matches_finite_differences():
  x, _ = _data(10)
  kern = NetworkKernel(BUILD, {"W_std": 1.3, "b_std": 0.2})
  k, grad = kern(x, eval_gradient=True)
  assert grad.shape == (10, 10, 2)
  eps = 1e-6
  for i in range(2):
    step = np.zeros(2)
    step[i] = eps
    fd = (kern.clone_with_theta(kern.theta + step)(x) -
          kern.clone_with_theta(kern.theta - step)(x)) / (2 * eps)
    np.testing.assert_allclose(grad[..., i], fd, rtol=1e-6, atol=1e-9)


def test_sklearn_kernel_protocol():
  kern = NetworkKernel(BUILD, {"W_std": 1.3, "b_std": 0.2},
                       value_bounds={"b_std": "fixed"})
  assert [h.name for h in kern.hyperparameters] == ["W_std", "b_std"]
  assert kern.hyperparameters[1].fixed
  np.testing.assert_allclose(kern.theta, [np.log(1.3)])
  np.testing.assert_allclose(kern.bounds, np.log([[1e-5, 1e5]]))
  copy = clone(kern)
  assert copy == kern and copy is not kern
  copy.theta = [0.]
  assert copy.values == {"W_std": 1.0, "b_std": 0.2}
  assert kern.values["W_std"] == 1.3
  params = kern.get_params()
  assert set(params) >= {"build", "values", "value_bounds", "get"}
  summed = kern + WhiteKernel(0.1)
  assert summed.theta.shape == (2,)
  x, _ = _data(6)
  k, grad = summed(x, eval_gradient=True)
  assert grad.shape == (6, 6, 2)
  assert "W_std=1.3" in repr(kern)


def test_gpr_reaches_the_same_optimum_as_fit_hyperparameters():
  # Targets from the GP prior of a known network (4 columns): a well
  # identified optimum that both optimizers must find.
  x, _ = _data(30)
  with jax.enable_x64(True):
    k = np.asarray(BUILD({"W_std": 1.5, "b_std": 0.6})[2](x, None, "nngp"))
  y = np.linalg.cholesky(k + 1e-2 * np.eye(30)) @ \
      np.random.RandomState(5).randn(30, 4)
  kern = NetworkKernel(BUILD, {"W_std": 1.3, "b_std": 0.2},
                       value_bounds=(1e-2, 1e2))
  gpr = GaussianProcessRegressor(
      kern + WhiteKernel(0.1, (1e-8, 1e2))).fit(x, y)
  ours = fit_hyperparameters(BUILD, {"W_std": 1.3, "b_std": 0.2}, x, y,
                             noise=0.1, steps=400, learning_rate=0.1)
  fitted = gpr.kernel_.k1.values
  np.testing.assert_allclose(ours.values["W_std"], fitted["W_std"],
                             rtol=0.02)
  np.testing.assert_allclose(ours.values["b_std"], fitted["b_std"],
                             rtol=0.02)
  np.testing.assert_allclose(ours.objective,
                             gpr.log_marginal_likelihood_value_, atol=1e-3)


def test_classifiers_and_kernel_ridge():
  x, y = _data(30)
  labels = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
  kern = NetworkKernel(BUILD, {"W_std": 1.3, "b_std": 0.2},
                       value_bounds=(1e-1, 1e1))
  assert KernelRidge(kernel=kern, alpha=1e-2).fit(x, y).score(x, y) > 0.9
  assert GaussianProcessClassifier(kern).fit(x, labels).score(x, labels) > 0.8
  k = kern(x)
  assert SVC(kernel="precomputed").fit(k, labels).score(k, labels) > 0.8


def test_bad_input():
  with pytest.raises(ValueError, match="0 < low < high"):
    NetworkKernel(BUILD, {"W_std": 1.0}, value_bounds=(-1., 2.))
  with pytest.raises(ValueError, match="unknown hyperparameters"):
    NetworkKernel(BUILD, {"W_std": 1.0}, value_bounds={"c": (1., 2.)})
  with pytest.raises(ValueError, match="non-empty dict"):
    NetworkKernel(BUILD, [1.0, 0.1])
  with pytest.raises(ValueError, match=r"values\['b_std'\].*> 0"):
    NetworkKernel(BUILD, {"W_std": 1.0, "b_std": -0.1})
  with pytest.raises(ValueError, match="without '__'"):
    NetworkKernel(BUILD, {"W__std": 1.0})
  kern = NetworkKernel(BUILD, {"W_std": 1.0, "b_std": 0.1})
  with pytest.raises(ValueError, match="theta has 1 entries"):
    kern.theta = [0.]
  with pytest.raises(ValueError, match="Y=None"):
    kern(np.ones((2, 3)), np.ones((2, 3)), eval_gradient=True)


def test_from_spec_kernel():
  kern = from_spec("Dense(64, 1.5, 0.05) Relu Dense(1, 1.5, 0.05)")
  x, _ = _data(5)
  ref = stax.serial(stax.Dense(64, 1.5, 0.05), stax.Relu(),
                    stax.Dense(1, 1.5, 0.05))[2]
  with jax.enable_x64(True):
    np.testing.assert_allclose(kern(x), ref(x, None, "nngp"), rtol=1e-12)


def test_kernel_regressor_fit_hyperparameters():
  x, y = _data(40)
  spec = "Dense(64, 1.0, 0.05) Relu Dense(1, 1.0, 0.05)"
  est = KernelRegressor(spec, kernel="nngp", fit_hyperparameters=True)
  est.fit(x[:30], y[:30])
  assert set(est.hyperparameters_) == {"W_std", "b_std"}
  assert est.diag_reg_ > 0 and np.isfinite(est.evidence_)
  assert est.score(x[30:], y[30:]) > 0.5
  assert clone(est).get_params()["fit_hyperparameters"] is True
  with pytest.raises(ValueError, match="spec-string"):
    KernelRegressor(stax.serial(stax.Dense(1)),
                    fit_hyperparameters=True).fit(x, y)
