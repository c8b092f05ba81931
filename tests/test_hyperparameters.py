"""widenets.hyperparameters: gradients in every hyperparameter, fitting."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("optax")

import widenets as nt
from widenets import stax
from widenets.hyperparameters import (compare_depths, dense_network,
                                      evidence_fn, evidence_table,
                                      fit_hyperparameters, from_spec)


def _prior_sample(build, hp, x, noise, columns, seed=0):
  """Targets drawn from the GP prior of ``build(hp)`` plus noise."""
  with jax.enable_x64(True):
    k = np.asarray(build(hp)[2](x, None, "nngp"), np.float64)
  chol = np.linalg.cholesky(k + noise * np.eye(len(x)))
  return chol @ np.random.RandomState(seed).randn(len(x), columns)


def test_grad_in_every_hyperparameter_is_one_call():
  def build(hp):
    return stax.serial(
        stax.Dense(8, hp["dense"]["W_std"], hp["dense"]["b_std"]),
        stax.ABRelu(hp["abrelu"]["a"], hp["abrelu"]["b"]),
        stax.Dense(8, hp["dense"]["W_std"], hp["dense"]["b_std"]),
        stax.Erf(hp["erf"]["a"], hp["erf"]["b"], 0.),
        stax.Dense(1, hp["readout"], 0.1))

  hp = {"dense": {"W_std": 1.2, "b_std": 0.2}, "abrelu": {"a": -0.3, "b": 1.},
        "erf": {"a": 1.1, "b": 0.8}, "readout": 1.0}
  rng = np.random.RandomState(0)
  with jax.enable_x64(True):
    x, y = jnp.asarray(rng.randn(8, 3)), jnp.asarray(rng.randn(8, 2))
    g_hp, g_noise = jax.grad(evidence_fn(build, x, y), argnums=(0, 1))(
        hp, 0.1)
  assert jax.tree_util.tree_structure(g_hp) == \
      jax.tree_util.tree_structure(hp)
  leaves = jax.tree_util.tree_leaves(g_hp) + [g_noise]
  assert all(np.isfinite(v) and abs(float(v)) > 0 for v in leaves)


@pytest.mark.slow
def test_fit_recovers_the_prior_hyperparameters():
  # 40 points x 24 independent output columns drawn from the prior of a
  # depth-2 ReLU network: the evidence pins W_std / b_std to ~5%.
  build = dense_network(2)
  true = {"W_std": 1.6, "b_std": 0.5}
  x = np.random.RandomState(1).randn(40, 3)
  y = _prior_sample(build, true, x, 1e-2, 24)
  res = fit_hyperparameters(build, {"W_std": 1.0, "b_std": 0.1}, x, y,
                            noise=0.1, steps=400, learning_rate=0.05)
  np.testing.assert_allclose(res.values["W_std"], 1.6, rtol=0.1)
  np.testing.assert_allclose(res.values["b_std"], 0.5, rtol=0.15)
  np.testing.assert_allclose(res.noise, 1e-2, rtol=0.3)


def test_fit_increases_evidence_and_reports_history():
  build = dense_network(1)
  x = np.random.RandomState(1).randn(16, 3)
  y = _prior_sample(build, {"W_std": 1.5, "b_std": 0.5}, x, 1e-2, 4)
  res = fit_hyperparameters(build, {"W_std": 0.8, "b_std": 0.1}, x, y,
                            noise=0.1, steps=60, learning_rate=0.1,
                            restarts=1)
  assert len(res.restart_objectives) == 2
  assert res.objective == pytest.approx(max(res.restart_objectives))
  assert res.history[-1] == pytest.approx(res.objective)
  assert res.objective > res.history[0]
  assert res.path["W_std"].shape == res.history.shape == \
      res.noise_path.shape
  with jax.enable_x64(True):
    f = evidence_fn(build, jnp.asarray(x), jnp.asarray(y))
    np.testing.assert_allclose(f(res.values, res.noise), res.objective,
                               rtol=1e-8)


def test_fixed_noise_bounds_and_unconstrained_leaves():
  build = dense_network(1, activation=lambda hp: stax.ABRelu(hp["a"], 1.0))
  x = np.random.RandomState(2).randn(12, 2)
  y = np.sin(x[:, :1])
  res = fit_hyperparameters(
      build, {"W_std": 1.0, "b_std": 0.2, "a": -0.1}, x, y, noise=0.05,
      fit_noise=False, positive={"W_std": True, "b_std": True, "a": False},
      bounds={"W_std": (0.5, 1.2), "b_std": None, "a": (-0.5, 0.5)},
      steps=40, learning_rate=0.2, criterion="loo")
  assert res.noise == pytest.approx(0.05)
  assert 0.5 <= res.values["W_std"] <= 1.2 + 1e-12
  assert -0.5 <= res.values["a"] <= 0.5


def test_compare_depths_table():
  x = np.random.RandomState(3).randn(12, 2)
  y = _prior_sample(dense_network(2), {"W_std": 1.4, "b_std": 0.3}, x,
                    1e-2, 2)
  results = compare_depths(dense_network, [1, 2], {"W_std": 1.0,
                                                   "b_std": 0.1}, x, y,
                           steps=20, learning_rate=0.1)
  assert set(results) == {1, 2}
  table = evidence_table(results)
  assert table.count("\n") == 3 and "*" in table and "W_std" in table


def test_from_spec_shares_w_and_b():
  build, init = from_spec("Dense(64, 1.5, 0.05) Relu Dense(1, W_std=2.0)")
  assert init == {"W_std": 1.5, "b_std": 0.05}
  x = np.random.RandomState(0).randn(4, 3)
  ref = stax.serial(stax.Dense(64, 1.1, 0.3), stax.Relu(),
                    stax.Dense(1, 1.1))[2](x, None, "nngp")
  got = build({"W_std": 1.1, "b_std": 0.3})[2](x, None, "nngp")
  np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_bad_hyperparameters_are_clear_errors():
  build = dense_network(1)
  x, y = np.ones((4, 2)), np.ones(4)
  init = {"W_std": 1.0, "b_std": 0.1}
  with pytest.raises(ValueError, match="bounds.*>= 0"):
    fit_hyperparameters(build, init, x, y, bounds={"W_std": (-1., 2.),
                                                   "b_std": None})
  with pytest.raises(ValueError, match="low < high"):
    fit_hyperparameters(build, init, x, y, bounds={"W_std": (2., 1.),
                                                   "b_std": None})
  with pytest.raises(ValueError, match="structure of init"):
    fit_hyperparameters(build, init, x, y, bounds={"W_std": (0.1, 2.)})
  with pytest.raises(ValueError, match="structure of init"):
    fit_hyperparameters(build, init, x, y, positive=[True, True])
  with pytest.raises(ValueError, match=r"init\['W_std'\].*> 0"):
    fit_hyperparameters(build, {"W_std": -1.0, "b_std": 0.1}, x, y)
  with pytest.raises(TypeError, match=r"init\['b_std'\].*number"):
    fit_hyperparameters(build, {"W_std": 1.0, "b_std": "big"}, x, y)
  with pytest.raises(ValueError, match="noise"):
    fit_hyperparameters(build, init, x, y, noise=-1.)
  with pytest.raises(ValueError, match="criterion"):
    fit_hyperparameters(build, init, x, y, criterion="aic")


def test_non_finite_objective_is_a_clear_error():
  def build(hp):
    kernel_fn = lambda x1, x2=None, get=None: hp["W_std"] * jnp.full(
        (x1.shape[0], x1.shape[0]), jnp.nan)
    return None, None, kernel_fn

  with pytest.raises(ValueError, match="NaN|not finite|nan"):
    fit_hyperparameters(build, {"W_std": 1.0}, np.ones((4, 2)), np.ones(4))


def test_public_name():
  assert nt.fit_hyperparameters is fit_hyperparameters


def test_evidence_grid_and_landscape_figure(tmp_path):
  pytest.importorskip("matplotlib")
  from widenets import plot
  from widenets.hyperparameters import evidence_grid
  build = dense_network(1)
  x = np.random.RandomState(0).randn(8, 2)
  y = np.sin(x[:, :1])
  w, b = [0.8, 1.2, 1.6], [0.1, 0.5]
  grid = evidence_grid(build, x, y, w, b, noise=0.1)
  assert grid.shape == (3, 2)
  with jax.enable_x64(True):
    ref = evidence_fn(build, jnp.asarray(x), jnp.asarray(y))(
        {"W_std": 1.2, "b_std": 0.5}, 0.1)
  np.testing.assert_allclose(grid[1, 1], ref, rtol=1e-10)
  fig = plot.evidence_landscape(w, b, grid, path=([0.8, 1.0], [0.1, 0.2]),
                                test_error=-grid)
  assert len(fig.axes) >= 2
  assert (tmp_path / "e.png").exists() is False
  plot.save(fig, tmp_path / "e.png")
  assert (tmp_path / "e.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="shape"):
    plot.evidence_landscape(w, b, grid.T)
