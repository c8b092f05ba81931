"""Bad input gets a clear ValueError naming the layer or argument and the
shapes involved."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax

X = jnp.asarray(np.random.RandomState(0).randn(3, 4), jnp.float32)


@pytest.fixture(scope="module")
def mlp():
  return stax.serial(stax.Dense(3), stax.Relu(), stax.Dense(1))


def test_one_dimensional_inputs(mlp):
  _, _, kernel_fn = mlp
  with pytest.raises(ValueError, match=r"at least 2-D.*\(4,\)"):
    kernel_fn(jnp.ones(4))
  with pytest.raises(ValueError, match=r"x2.*\(4,\)"):
    kernel_fn(X, jnp.ones(4))


def test_one_dimensional_inputs_to_dense_init():
  init_fn, _, _ = stax.Dense(3)
  with pytest.raises(ValueError, match=r"Dense.*\(4,\)"):
    init_fn(jax.random.PRNGKey(0), (4,))


@pytest.mark.parametrize("act", [stax.Relu, stax.Erf, stax.Sign, stax.Abs,
                                 stax.Sigmoid_like,
                                 lambda: stax.LeakyRelu(0.1),
                                 lambda: stax.ABRelu(-0.5, 2.0)])
def test_activation_applied_to_inputs(act):
  _, _, kernel_fn = stax.serial(act(), stax.Dense(1))
  with pytest.raises(ValueError, match=r"Gaussian.*inputs.*\(3, 4\).*Dense"):
    kernel_fn(X)


def test_activation_after_activation():
  _, _, kernel_fn = stax.serial(stax.Dense(2), stax.Relu(), stax.Erf())
  with pytest.raises(ValueError, match=r"Erf.*non-Gaussian"):
    kernel_fn(X)


def test_dropout_on_inputs():
  _, _, kernel_fn = stax.Dropout(0.5)
  with pytest.raises(ValueError, match="Dropout.*inputs"):
    kernel_fn(X)


def _mismatched_sum():
  return stax.serial(stax.FanOut(2),
                     stax.parallel(stax.Dense(3), stax.Dense(5)),
                     stax.FanInSum())


def test_fan_in_sum_mismatched_shapes_kernel_fn():
  # Under 'ntk' parameterization Dense's width does not change the kernel, but
  # the finite network's shapes disagree, so the sum is undefined.
  _, _, kernel_fn = _mismatched_sum()
  with pytest.raises(ValueError, match=r"FanInSum.*\(3, 3\).*\(3, 5\)"):
    kernel_fn(X)


def test_fan_in_sum_mismatched_shapes_init_fn():
  init_fn, _, _ = _mismatched_sum()
  with pytest.raises(ValueError, match=r"FanInSum.*\(3, 3\).*\(3, 5\)"):
    init_fn(jax.random.PRNGKey(0), X.shape)


def test_fan_in_sum_mismatched_shapes_apply_fn():
  _, apply_fn, _ = stax.FanInSum()
  with pytest.raises(ValueError, match=r"FanInSum.*\(3, 3\).*\(3, 5\)"):
    apply_fn((), [jnp.ones((3, 3)), jnp.ones((3, 5))])


def test_fan_in_prod_mismatched_shapes():
  _, _, kernel_fn = stax.serial(stax.FanOut(2),
                                stax.parallel(stax.Identity(), stax.Flatten()),
                                stax.FanInProd())
  with pytest.raises(ValueError, match=r"FanInProd.*\(3, 2, 4\).*\(3, 8\)"):
    kernel_fn(jnp.ones((3, 2, 4)))


def test_fan_in_concat_mismatched_shapes():
  init_fn, _, kernel_fn = stax.serial(
      stax.FanOut(2), stax.parallel(stax.Identity(), stax.Flatten()),
      stax.FanInConcat())
  with pytest.raises(ValueError, match=r"FanInConcat.*\(3, 2, 4\)"):
    kernel_fn(jnp.ones((3, 2, 4)))
  with pytest.raises(ValueError, match=r"FanInConcat.*\(3, 2, 4\)"):
    init_fn(jax.random.PRNGKey(0), (3, 2, 4))


def test_fan_in_sum_of_non_gaussian_branches():
  _, _, kernel_fn = stax.serial(
      stax.Dense(3), stax.FanOut(2),
      stax.parallel(stax.Relu(), stax.Identity()), stax.FanInSum())
  with pytest.raises(ValueError, match="FanInSum.*Gaussian"):
    kernel_fn(X)


def test_fan_in_without_fan_out():
  _, _, kernel_fn = stax.serial(stax.Dense(3), stax.FanInSum())
  with pytest.raises(ValueError, match="FanInSum.*FanOut"):
    kernel_fn(X)


def test_parallel_branch_count():
  _, _, kernel_fn = stax.serial(stax.FanOut(3),
                                stax.parallel(stax.Dense(1), stax.Dense(1)))
  with pytest.raises(ValueError, match="parallel.*2.*3"):
    kernel_fn(X)


def test_unknown_get(mlp):
  _, _, kernel_fn = mlp
  with pytest.raises(ValueError, match=r"Unknown `get` 'ntkk'.*nngp"):
    kernel_fn(X, None, "ntkk")
  with pytest.raises(ValueError, match=r"Unknown `get` 'cov3'"):
    kernel_fn(X, X, ("nngp", "cov3"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_in_inputs(mlp, bad):
  _, _, kernel_fn = mlp
  with pytest.raises(ValueError, match=r"x1 of shape \(3, 4\).*NaN"):
    kernel_fn(X.at[1, 2].set(bad))
  with pytest.raises(ValueError, match=r"x2 of shape \(2, 4\).*NaN"):
    kernel_fn(X, X[:2].at[0, 0].set(bad))


def test_feature_mismatch(mlp):
  _, _, kernel_fn = mlp
  with pytest.raises(ValueError, match=r"x1 \(3, 4\) and x2 \(2, 5\)"):
    kernel_fn(X, jnp.ones((2, 5)))
  with pytest.raises(ValueError, match=r"x1 \(3, 4\) and x2 \(2, 4, 1\)"):
    kernel_fn(X, jnp.ones((2, 4, 1)))


def test_kernel_and_x2_together(mlp):
  _, _, kernel_fn = mlp
  k = stax.Identity()[2](X)
  with pytest.raises(ValueError, match="Kernel"):
    kernel_fn(k, X)


def test_dense_apply_width_mismatch():
  init_fn, apply_fn, _ = stax.Dense(3)
  _, params = init_fn(jax.random.PRNGKey(0), (2, 5))
  with pytest.raises(ValueError, match=r"Dense.*4 features.*\(3, 4\).*5"):
    apply_fn(params, X)


@pytest.mark.parametrize("kwargs,match", [
    (dict(parameterization="foo"), "parameterization.*'foo'"),
    (dict(parameterization="standard", s=(1, 2, 3)), "s must be a pair"),
])
def test_dense_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    stax.Dense(3, **kwargs)


@pytest.mark.parametrize("rate,mode", [(0.0, "train"), (1.5, "train"),
                                       (0.5, "eval")])
def test_dropout_bad_arguments(rate, mode):
  with pytest.raises(ValueError, match="Dropout"):
    stax.Dropout(rate, mode)


def test_dropout_train_needs_rng():
  _, apply_fn, _ = stax.Dropout(0.5)
  with pytest.raises(ValueError, match="rng"):
    apply_fn((), X)


def test_repeat_bad_arguments():
  with pytest.raises(ValueError, match="repeat.*n must be >= 0"):
    stax.repeat(stax.Dense(3), -1)
  init_fn, _, _ = stax.repeat(stax.Dense(3), 2)
  with pytest.raises(ValueError, match=r"repeat.*\(3, 4\).*\(3, 3\)"):
    init_fn(jax.random.PRNGKey(0), (3, 4))


def test_serial_of_non_layers():
  with pytest.raises(TypeError, match="serial.*argument 1"):
    stax.serial(stax.Dense(1), 3)
  with pytest.raises(ValueError, match="serial.*at least one"):
    stax.serial()
