"""`overflow.all_finite`, the finiteness flag of every kernel program: small
leaves of one shape share one variadic reduction, large ones are summed;
either way one non-finite entry anywhere makes the flag False, directly,
under jax.jit and per member under jax.vmap, and a derivative through a
program holding the flag is untouched (issue 15)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from widenets import stax
from widenets.stax import overflow
from widenets.stax.overflow import all_finite

BAD = (np.nan, np.inf, -np.inf)


def _leaves(seed, shapes, dtype):
  rs = np.random.RandomState(seed)
  return [np.asarray(rs.randn(*s) * 10).astype(dtype) for s in shapes]


_shape = st.lists(st.integers(1, 9), min_size=0, max_size=3).map(tuple)


@pytest.fixture(params=["grouped", "summed"])
def path(request, monkeypatch):
  """Every leaf through the grouped reduction, or every leaf through
  ``sum(x * 0)`` (as leaves above `FUSED_CHECK_UP_TO` are)."""
  if request.param == "summed":
    monkeypatch.setattr(overflow, "FUSED_CHECK_UP_TO", 0)
  return request.param


# The fixture only sets a module constant that every example shares.
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shapes=st.lists(_shape, min_size=1, max_size=4), seed=st.integers(0, 99),
       which=st.integers(0, 3), where=st.integers(0, 10**6),
       bad=st.sampled_from(BAD), dtype=st.sampled_from(["float32", "float16"]))
def test_one_bad_entry_anywhere_is_found(path, shapes, seed, which, where,
                                         bad, dtype):
  assume(which < len(shapes) and np.prod(shapes[which]) > 0)
  leaves = _leaves(seed, shapes, dtype)
  assert bool(all_finite(leaves))
  flat = leaves[which].reshape(-1)
  flat[where % flat.size] = bad
  leaves[which] = flat.reshape(shapes[which])
  assert not bool(all_finite(leaves))
  assert not bool(jax.jit(all_finite)(leaves))
  # Integer leaves are not checked; a dict of leaves is one tree.
  assert not bool(all_finite({"a": leaves, "n": np.arange(3)}))


def test_huge_finite_values_do_not_overflow_the_check(path):
  # The check never adds finite values: 1e38 * 4 entries would be inf.
  big = np.full((4, 4), 3e38, np.float32)
  assert bool(all_finite([big, -big]))


def test_mask_replaces_entries_before_the_check(path):
  x = np.ones((3, 4), np.float32)
  x[1, 2] = np.nan
  assert not bool(all_finite(x))
  assert bool(all_finite(x, mask=lambda a: jnp.where(jnp.isnan(a), 0., a)))


def test_per_member_under_vmap(path):
  x = np.ones((3, 5, 4), np.float32)
  x[1, 4, 0] = np.inf
  got = jax.vmap(lambda a, b: all_finite([a, b]))(x, x * 2)
  np.testing.assert_array_equal(got, [True, False, True])


def test_float64_and_complex_leaves(path):
  with jax.enable_x64(True):
    x = jnp.ones((4, 4), jnp.float64)
    z = jnp.ones((4, 4), jnp.complex64)
    assert bool(all_finite([x, z]))
    assert not bool(all_finite([x, z.at[2, 1].set(complex(0, np.inf))]))
    assert not bool(all_finite([x.at[0, 3].set(np.nan), z]))


def test_derivatives_through_a_checked_program(path):
  def f(x):
    return jnp.where(all_finite([x, x * x]), jnp.sum(x ** 3), 0.)

  x = jnp.arange(1., 7.).reshape(2, 3)
  np.testing.assert_allclose(jax.grad(f)(x), 3 * x ** 2)
  np.testing.assert_allclose(jax.jit(jax.grad(f))(x), 3 * x ** 2)


def test_small_kernel_programs_check_once():
  # The lowered program of a small traced call checks both (N, N) outputs
  # and the inputs (through their kernel x x^T, also (N, N)) in one
  # variadic reduction, and reduces no input array.
  kernel_fn = stax.serial(stax.Dense(64), stax.Erf(), stax.Dense(1))[2]
  x = np.random.RandomState(0).randn(6, 3).astype(np.float32)
  text = jax.jit(kernel_fn, static_argnames="get").lower(
      x, None, ("nngp", "ntk")).as_text()
  reduces = [line for line in text.splitlines()
             if "stablehlo.reduce(" in line]
  assert len(reduces) == 1, reduces
  assert ":3 = stablehlo.reduce(" in reduces[0], reduces
  assert "tensor<6x6xf32>" in reduces[0], reduces


@pytest.mark.parametrize("with_x2", [False, True])
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("n", [5, 300])
def test_calls_tell_bad_inputs_from_overflow(with_x2, jit, n):
  # One flag covers inputs and outputs (n = 5: a small call, checked
  # through x1 x2^T; n = 300: packed without x2, else on the whole grid,
  # checked through the inputs' variances); the error still names the cause.
  from widenets.stax.overflow import KernelOverflowError
  kernel_fn = stax.serial(stax.Dense(8, W_std=1e3), stax.Relu(),
                          stax.Dense(8, W_std=1e3), stax.Relu(),
                          stax.Dense(1))[2]
  call = (jax.jit(kernel_fn, static_argnames="get") if jit else kernel_fn)
  errors = (ValueError, jax.errors.JaxRuntimeError)
  x = np.random.RandomState(0).randn(n, 3).astype(np.float32)
  x2 = x[:n - 1] * 2 if with_x2 else None
  bad = x.copy()
  bad[3, 2] = np.inf
  with pytest.raises(errors, match=rf"x1 of shape \({n}, 3\) contains NaN"):
    jax.block_until_ready(call(bad, x2, "ntk"))
  if with_x2:
    bad2 = x2.copy()
    bad2[n - 2, 0] = np.nan
    with pytest.raises(errors,
                       match=rf"x2 of shape \({n - 1}, 3\) contains NaN"):
      jax.block_until_ready(call(x, bad2, "ntk"))
  # Finite inputs so large that x x^T overflows: an overflow, not bad input.
  with pytest.raises((KernelOverflowError, jax.errors.JaxRuntimeError),
                     match="overflowed"):
    jax.block_until_ready(call(x * 1e25, x2, "ntk"))


def test_network_closing_over_a_tracer_tells_bad_input_from_overflow():
  # A custom Elementwise layer's closure is not a declared hyperparameter:
  # a network built inside jax.jit from a traced value closes over a
  # tracer, while the inputs (closed over) are concrete; its error path
  # still names the cause.
  x = np.random.RandomState(0).randn(5, 3).astype(np.float32)
  bad = x.copy()
  bad[1, 1] = np.nan

  def ntk(c, inputs):
    scaled = stax.Elementwise(
        lambda u: c * u, lambda cov12, var1, var2: c ** 2 * cov12,
        lambda cov12, var1, var2: c ** 2 * jnp.ones_like(cov12))
    kernel_fn = stax.serial(stax.Dense(8), scaled, stax.Dense(1))[2]
    return kernel_fn(inputs, None, "ntk")

  np.testing.assert_allclose(jax.jit(lambda c: ntk(c, x))(1.0),
                             ntk(1.0, x), rtol=1e-6)
  errors = (ValueError, jax.errors.JaxRuntimeError)
  with pytest.raises(errors, match=r"x1 of shape \(5, 3\) contains NaN"):
    jax.block_until_ready(jax.jit(lambda c: ntk(c, bad))(1.0))
  with pytest.raises(errors, match="overflowed"):
    jax.block_until_ready(jax.jit(lambda c: ntk(c, x))(1e30))
