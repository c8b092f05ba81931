"""Bad input to `widenets.predict` gets a clear error naming the argument
and the shapes."""
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import predict, stax


def _k(n):
  a = np.random.RandomState(n).randn(n, n).astype(np.float32)
  return jnp.asarray(a @ a.T / n + np.eye(n, dtype=np.float32))


def test_y_train_wrong_length():
  with pytest.raises(ValueError, match=r"`k_train_train` has shape \(6, 6\)"
                     r".*`y_train` of shape \(5, 1\)"):
    predict.gp_inference(_k(6), jnp.ones((5, 1)))
  with pytest.raises(ValueError, match=r"\(6, 6\).*\(7, 2\)"):
    predict.gradient_descent_mse(_k(6), jnp.ones((7, 2)))
  with pytest.raises(ValueError, match=r"\(6, 6\).*\(4, 1\)"):
    predict.gradient_descent(lambda f, y: jnp.sum(f), _k(6), jnp.ones((4, 1)))


def test_x_train_y_train_mismatch():
  _, _, kernel_fn = stax.serial(stax.Dense(8), stax.Erf(), stax.Dense(1))
  with pytest.raises(ValueError, match=r"`x_train` has 5 examples.*`y_train`"
                     r" has 4"):
    predict.gradient_descent_mse_ensemble(kernel_fn, jnp.ones((5, 2)),
                                          jnp.ones((4, 1)))
  with pytest.raises(ValueError, match=r"`x_train` has 5 examples"):
    predict.gp_inference(kernel_fn, jnp.ones((5, 2)), jnp.ones((4, 1)),
                         jnp.ones((3, 2)), "nngp")


def test_mismatched_test_train_kernel():
  pf = predict.gp_inference(_k(6), jnp.ones((6, 1)))
  with pytest.raises(ValueError, match=r"`k_test_train` has shape \(3, 5\); "
                     r"its train axes .* must be \(6,\)"):
    pf("nngp", jnp.ones((3, 5)))
  pm = predict.gradient_descent_mse(_k(6), jnp.ones((6, 1)))
  with pytest.raises(ValueError, match=r"`k_test_train` has shape \(3, 7\)"):
    pm(1., 0., jnp.zeros((3, 1)), jnp.ones((3, 7)))
  with pytest.raises(ValueError, match=r"has shape \(6, 6, 2\).*needs a "
                     r"kernel of shape \(6, 6\)"):
    predict.gp_inference(jnp.ones((6, 6, 2)), jnp.ones((6, 1)))


def test_negative_diag_reg():
  for make in (predict.gp_inference, predict.gradient_descent_mse):
    with pytest.raises(ValueError, match=r"`diag_reg` must be >= 0.*-0\.1"):
      make(_k(4), jnp.ones((4, 1)), diag_reg=-0.1)
  with pytest.raises(ValueError, match="diag_reg"):
    predict.gradient_descent_mse_ensemble(
        lambda *a, **k: None, jnp.ones((4, 2)), jnp.ones((4, 1)),
        diag_reg=-1.)


def test_fx_test_0_without_k_test_train():
  pm = predict.gradient_descent_mse(_k(4), jnp.ones((4, 1)))
  with pytest.raises(ValueError, match=r"`fx_test_0` \(shape \(2, 1\)\) was "
                     r"given without `k_test_train`"):
    pm(1., 0., jnp.zeros((2, 1)))
  pd = predict.gradient_descent(lambda f, y: jnp.sum((f - y) ** 2), _k(4),
                                jnp.ones((4, 1)))
  with pytest.raises(ValueError, match="without `k_test_train`"):
    pd(1., 0., jnp.zeros((2, 1)))
  with pytest.raises(ValueError, match="Both `fx_train_0` and `fx_test_0`"):
    pm(1., None, None)


def test_bad_get_and_solver_and_state():
  pf = predict.gp_inference(_k(4), jnp.ones((4, 1)))
  with pytest.raises(ValueError, match="Unknown `get` 'cov1'"):
    pf("cov1", _k(4))
  with pytest.raises(ValueError, match="needs both NTK and NNGP"):
    pf("ntk", _k(4), _k(4))
  with pytest.raises(ValueError, match="Unknown solver 'lu'"):
    predict.gp_inference(_k(4), jnp.ones((4, 1)), solver="lu")("nngp", _k(4))
  with pytest.raises(ValueError, match="on_failure"):
    predict.Cholesky(on_failure="ignore")
  with pytest.raises(ValueError, match="Unknown preconditioner 'ilu'"):
    predict.cg_solve(_k(4), jnp.ones(4), preconditioner="ilu")
  pd = predict.gradient_descent(lambda f, y: jnp.sum((f - y) ** 2), _k(4),
                                jnp.ones((4, 1)))
  with pytest.raises(ValueError, match="momentum variables"):
    pd(1., predict.ODEState(jnp.zeros((4, 1)), None, jnp.zeros((4, 1))))
  with pytest.raises(ValueError, match="non-decreasing"):
    pd(jnp.array([2., 1.]), 0.)
  with pytest.raises(ValueError, match=r"trace_axes.*out of range"):
    predict.gp_inference(_k(4), jnp.ones((4, 1)), trace_axes=(3,))
