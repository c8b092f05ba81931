"""`gradient_descent_mse_ensemble` on small problems asks an analytic,
pairwise kernel function for the train-train, test-train and test-test
kernels in one ``x2=None`` call on the concatenated inputs (one program to
compile instead of three): the same predictions as three calls, a kernel
already cached stays, and everything that could make the blocks differ from
separate calls (kwargs, foreign or sample-mixing kernel functions, traced or
mismatched inputs, large problems) keeps the three calls."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import predict, stax
from widenets.buckets import bucketed, is_pairwise
from widenets.predict import gradient_flow


class Spy:
  """A kernel function that records its calls; it is ``pairwise`` where
  the one it wraps is."""

  def __init__(self, kernel_fn):
    self.__wrapped__ = kernel_fn
    self.pairwise = is_pairwise(kernel_fn)
    self.calls = []

  def __call__(self, x1, x2=None, get=None, **kwargs):
    self.calls.append((np.shape(x1), None if x2 is None else np.shape(x2),
                       get))
    return self.__wrapped__(x1, x2, get, **kwargs)


def _erf_net():
  return stax.serial(stax.Dense(256, W_std=1.5, b_std=0.05), stax.Erf(),
                     stax.Dense(1, W_std=1.5, b_std=0.05))[2]


def _data(n=7, m=5, d=3, dtype=np.float32):
  rs = np.random.RandomState(0)
  return (rs.randn(n, d).astype(dtype), rs.randn(m, d).astype(dtype),
          rs.randn(n, 2).astype(dtype))


def _predictions(kernel_fn, x_train, y_train, x_test, **kwargs):
  predict_fn = predict.gradient_descent_mse_ensemble(
      kernel_fn, x_train, y_train, diag_reg=1e-3, **kwargs)
  return [predict_fn(t=t, x_test=x_test, get=get, compute_cov=True)
          for t in (None, 3.0) for get in ("nngp", "ntk")]


@pytest.mark.parametrize("jitted", [False, True])
def test_one_call_gives_the_predictions_of_three(monkeypatch, jitted):
  x_train, x_test, y_train = _data()
  kernel_fn = _erf_net()
  if jitted:
    kernel_fn = jax.jit(kernel_fn, static_argnames="get")
  spy = Spy(kernel_fn)
  merged = _predictions(spy, x_train, y_train, x_test)
  # Every kernel came from calls on all 12 inputs with x2=None.
  assert spy.calls and all(c[:2] == ((12, 3), None) for c in spy.calls), \
      spy.calls
  monkeypatch.setattr(gradient_flow, "MERGE_ENTRIES", 0)
  separate = _predictions(kernel_fn, x_train, y_train, x_test)
  for a, b in zip(jax.tree_util.tree_leaves(merged),
                  jax.tree_util.tree_leaves(separate)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_merged_blocks_are_the_separate_kernels():
  x_train, x_test, _ = _data()
  kernel_fn = _erf_net()
  k_dd, k_td, nngp_tt = gradient_flow._merged_call(
      kernel_fn, jnp.asarray(x_train), x_test, ("nngp", "ntk"))
  want_td = kernel_fn(x_test, x_train, ("nngp", "ntk"))
  want_dd = kernel_fn(x_train, None, ("nngp", "ntk"))
  for g in ("nngp", "ntk"):
    np.testing.assert_allclose(k_td[g], getattr(want_td, g), rtol=1e-5)
    np.testing.assert_allclose(k_dd[g], getattr(want_dd, g), rtol=1e-5)
  np.testing.assert_allclose(nngp_tt, kernel_fn(x_test, None, "nngp"),
                             rtol=1e-5)
  assert k_td["ntk"].shape == (5, 7) and nngp_tt.shape == (5, 5)


def test_a_cached_train_kernel_stays():
  x_train, x_test, y_train = _data()
  spy = Spy(_erf_net())
  predict_fn = predict.gradient_descent_mse_ensemble(spy, x_train, y_train,
                                                     diag_reg=1e-3)
  on_train = predict_fn(t=2.0, get="ntk")
  assert spy.calls == [((7, 3), None, "ntk")]
  predict_fn(t=2.0, x_test=x_test, get="ntk")
  assert spy.calls[1][:2] == ((12, 3), None)
  # The train predictions still come from the first train-train kernel
  # (and its cached eigendecomposition), bit for bit.
  np.testing.assert_array_equal(predict_fn(t=2.0, get="ntk"), on_train)


def _separate(spy):
  return all(c[0][0] != 12 for c in spy.calls)


def test_kwargs_keep_three_calls():
  x_train, x_test, y_train = _data()
  spy = Spy(_erf_net())
  predict_fn = predict.gradient_descent_mse_ensemble(
      spy, x_train, y_train, diag_reg=1e-3, diagonal_spatial=False)
  predict_fn(x_test=x_test, get="nngp", compute_cov=True)
  assert _separate(spy) and len(spy.calls) == 3, spy.calls


def test_kernel_functions_not_known_pairwise_keep_three_calls():
  x_train, x_test, y_train = _data()
  analytic = _erf_net()
  foreign = Spy(lambda x1, x2=None, get=None: analytic(x1, x2, get))
  _predictions(foreign, x_train, y_train, x_test)
  assert _separate(foreign)
  # A layer mixing samples' spatial positions is not packable: neither
  # is the network.
  mixing = stax.serial(stax.Dense(8), stax.LayerNorm(axis=(1, 2, 3)),
                       stax.Flatten(), stax.Dense(1))[2]
  assert not mixing.pairwise and _erf_net().pairwise
  images = np.random.RandomState(1).randn(9, 4, 4, 2).astype(np.float32)
  spy = Spy(mixing)
  predict.gradient_descent_mse_ensemble(
      spy, images[:6], y_train[:6], diag_reg=1e-3)(x_test=images[6:],
                                                   get="nngp")
  assert all(c[0][0] != 9 for c in spy.calls), spy.calls


def test_large_mismatched_or_traced_inputs_keep_three_calls(monkeypatch):
  x_train, x_test, y_train = _data()
  spy = Spy(_erf_net())
  monkeypatch.setattr(gradient_flow, "MERGE_ENTRIES", 11 ** 2)
  predict.gradient_descent_mse_ensemble(spy, x_train, y_train,
                                        diag_reg=1e-3)(x_test=x_test)
  assert _separate(spy)
  monkeypatch.undo()
  spy.calls.clear()
  predict_fn = predict.gradient_descent_mse_ensemble(spy, x_train, y_train,
                                                     diag_reg=1e-3)
  predict_fn(x_test=x_test.astype(np.float16), get="nngp")
  assert _separate(spy)
  spy.calls.clear()
  mean = jax.jit(lambda x: predict_fn(x_test=x, get="nngp"))(x_test)
  assert _separate(spy) and mean.shape == (5, 2)


def test_wrappers_declare_pairwise():
  kernel_fn = _erf_net()
  assert is_pairwise(kernel_fn)
  assert is_pairwise(jax.jit(kernel_fn, static_argnames="get"))
  assert is_pairwise(bucketed(kernel_fn))
  # Inputs with the batch on axis 1 would be concatenated on the wrong axis.
  assert not is_pairwise(bucketed(kernel_fn, batch_axis=1))
  # A wrapper that does not say so is not looked through (it may change the
  # arguments, or cache by them as the scikit-learn estimators do).
  wrapper = functools.wraps(kernel_fn)(lambda *a, **k: kernel_fn(*a, **k))
  assert not is_pairwise(wrapper)
  assert not is_pairwise(lambda x1, x2=None, get=None: kernel_fn(x1, x2, get))


def test_bucketed_kernel_fn_merges_and_predicts_the_same(monkeypatch):
  x_train, x_test, y_train = _data()
  spy = Spy(bucketed(_erf_net()))
  merged = _predictions(spy, x_train, y_train, x_test)
  assert all(c[:2] == ((12, 3), None) for c in spy.calls), spy.calls
  monkeypatch.setattr(gradient_flow, "MERGE_ENTRIES", 0)
  separate = _predictions(_erf_net(), x_train, y_train, x_test)
  for a, b in zip(jax.tree_util.tree_leaves(merged),
                  jax.tree_util.tree_leaves(separate)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_test_inputs_equal_to_the_train_inputs_keep_three_calls():
  # kernel_fn(x_test, x_train) with equal values is an x1-is-x2 call
  # (Dropout's diagonal term); the off-diagonal block of one call is not.
  x_train, _, y_train = _data()
  kernel_fn = stax.serial(stax.Dense(64), stax.Relu(),
                          stax.Dropout(0.8, mode="train"), stax.Dense(1))[2]
  same = kernel_fn(x_train, x_train.copy(), "nngp")
  block = kernel_fn(np.concatenate([x_train, x_train]), None, "nngp")[7:, :7]
  assert not np.allclose(same, block, rtol=1e-3)
  assert gradient_flow._merged_call(kernel_fn, jnp.asarray(x_train),
                                    x_train.copy(), ("nngp",)) is None
  spy = Spy(kernel_fn)
  predict.gradient_descent_mse_ensemble(spy, x_train, y_train, diag_reg=1e-3)(
      t=2.0, x_test=x_train.copy(), get="nngp")
  assert spy.calls == [((7, 3), None, "nngp"), ((7, 3), (7, 3), "nngp")]
