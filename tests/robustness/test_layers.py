"""Layer arguments and inputs: errors naming the layer, argument and value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax

X = np.random.RandomState(0).randn(3, 4).astype(np.float32)
IMG = np.random.RandomState(1).randn(2, 6, 6, 3).astype(np.float32)


@pytest.mark.parametrize("make, match", [
    (lambda: stax.Dense(0), r"Dense: `out_dim` must be a positive integer; "
     r"got 0"),
    (lambda: stax.Dense(-5), r"Dense: `out_dim` .* got -5"),
    (lambda: stax.Dense(2, W_std=np.nan), r"Dense: `W_std` must be finite; "
     r"got W_std=nan"),
    (lambda: stax.Dense(2, b_std=np.inf), r"Dense: `b_std` must be finite"),
    (lambda: stax.Dense(2, parameterization="standard", s=(0, 0)),
     r"Dense: every entry of `s` .* got s=\(0, 0\)"),
    (lambda: stax.Conv(4, (2, 2), strides=(0, 1)),
     r"Conv: every entry of `strides` .* got strides=\(0, 1\)"),
    (lambda: stax.Conv(4, (2, 2), strides=(-1, 1)),
     r"Conv: every entry of `strides` .* got strides=\(-1, 1\)"),
    (lambda: stax.Conv(4, (0, 2)), r"Conv: every entry of `filter_shape`"),
    (lambda: stax.Conv(0, (2, 2)), r"Conv: `out_chan` .* got 0"),
    (lambda: stax.Conv(4, (2, 2), W_std=np.nan), r"Conv: `W_std` must be "
     r"finite"),
    (lambda: stax.AvgPool((2, 2), strides=(0, 1)),
     r"AvgPool: every entry of `strides`"),
    (lambda: stax.SumPool((0, 2)), r"SumPool: every entry of `window_shape`"),
    (lambda: stax.LeakyRelu(np.nan), r"LeakyRelu: `alpha` must be finite; "
     r"got alpha=nan"),
    (lambda: stax.ABRelu(1., np.inf), r"ABRelu: `b` must be finite"),
    (lambda: stax.Conv(4, (2, 2), padding="FOO"),
     r"Conv: `padding` must be 'VALID', 'SAME' or 'CIRCULAR'; got "
     r"padding='FOO'"),
    (lambda: stax.AvgPool((2, 2), padding="same-ish"), r"AvgPool: `padding`"),
    (lambda: stax.Dense(2, parameterization="foo"),
     r"Dense: `parameterization` must be 'ntk' or 'standard'; got "
     r"parameterization='foo'"),
    (lambda: stax.ImageResize((-2, -2, -2, -1), "linear"),
     r"ImageResize: every entry of `shape` .* got shape=\(-2, -2, -2, -1\)"),
])
def test_bad_arguments_fail_at_construction(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_non_integer_width_is_a_type_error():
  with pytest.raises(TypeError, match=r"Dense: `out_dim` .* got 2\.5"):
    stax.Dense(2.5)


def test_valid_arguments_still_build():
  stax.Dense(np.int64(3), W_std=jnp.asarray(1.5), b_std=None)
  stax.Conv(2, (3, 3), strides=(2, 1), padding="SAME")
  stax.ImageResize((-1, 4, 4, -1), "linear")
  stax.LeakyRelu(0.1)


def test_traced_hyperparameters_are_not_checked():
  def nngp(w):
    return stax.Dense(1, W_std=w)[2](X, None, "nngp").sum()
  assert np.isfinite(float(jax.grad(nngp)(1.5)))


def test_zero_features_name_the_axis_not_overflow():
  _, _, kernel_fn = stax.serial(stax.Dense(2), stax.Relu())
  with pytest.raises(ValueError, match=r"x1 of shape \(3, 0\) has no "
                     r"entries on axis 1"):
    kernel_fn(np.zeros((3, 0), np.float32), None, "nngp")


@pytest.mark.parametrize("x", [np.array([["a", "b"]]),
                               np.array([[1, None]], dtype=object)])
def test_non_numeric_inputs(x):
  with pytest.raises(TypeError, match=r"Dense\(2\): x1 must be a numeric "
                     r"array; got dtype"):
    stax.Dense(2)[2](x, None, "nngp")


def test_non_numeric_x2():
  with pytest.raises(TypeError, match=r"x2 must be a numeric array"):
    stax.Dense(2)[2](X, np.array([["a"] * 4]), "nngp")


def test_index_out_of_range_kernel_and_apply():
  init_fn, apply_fn, kernel_fn = stax.Index(stax.Slice[:, 100])
  msg = r"Index: index 100 is out of range for axis 1 of size 4"
  with pytest.raises(IndexError, match=msg):
    kernel_fn(X, None, "nngp")
  with pytest.raises(IndexError, match=msg):
    apply_fn((), jnp.asarray(X))
  with pytest.raises(IndexError, match=msg):
    init_fn(jax.random.PRNGKey(0), X.shape)


def test_index_out_of_range_spatial_axis():
  _, _, kernel_fn = stax.serial(stax.Index(stax.Slice[:, -7]), stax.Flatten())
  with pytest.raises(IndexError, match=r"index -7 is out of range for axis 1 "
                     r"of size 6"):
    kernel_fn(IMG, None, "nngp")


def test_index_in_range_matches_slicing():
  _, apply_fn, kernel_fn = stax.serial(stax.Index(stax.Slice[:, -1, ..., :]),
                                       stax.Flatten())
  k = kernel_fn(IMG, None, "nngp")
  x = IMG[:, -1].reshape(2, -1)
  np.testing.assert_allclose(k, x @ x.T / x.shape[1], rtol=1e-5)
