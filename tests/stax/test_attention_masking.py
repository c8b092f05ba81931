"""GlobalSelfAttention, masking (mask_constant / MaskedArray / unmask_fn),
LayerNorm and Index: Monte Carlo and exact checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from widenets import stax
from tests.stax.mc import check_against_mc, mc_kernels, rel_err

PAD = -7.0


def _seqs(n1=4, n2=3, t=5, c=3, seed=0):
  rs = np.random.RandomState(seed)
  x1 = rs.randn(n1, t, c).astype(np.float32)
  x2 = (0.7 * x1[:n2] + 0.7 * rs.randn(n2, t, c)).astype(np.float32)
  return jnp.asarray(x1), jnp.asarray(x2)


def _pad(x, lengths):
  x = np.array(x)
  for i, n in enumerate(lengths):
    x[i, n:] = PAD
  return jnp.asarray(x)


def test_attention_matches_monte_carlo():
  net = stax.serial(
      stax.Dense(256, b_std=0.1),
      stax.GlobalSelfAttention(256, 256, 64, 8, W_key_std=1.5,
                               b_std=0.1, attention_mechanism="SOFTMAX"),
      stax.Relu(), stax.GlobalAvgPool(), stax.Dense(256))
  x1, x2 = _seqs()
  check_against_mc(net, x1, x2, n_samples=16, tol=0.1, ntk_tol=0.15)


@pytest.mark.slow
@pytest.mark.parametrize("mech,pe", [("RELU", "SUM"), ("ABS", "CONCAT"),
                                     ("IDENTITY", "NONE")])
def test_attention_variants_match_monte_carlo(mech, pe):
  net = stax.serial(
      stax.Dense(256),
      stax.GlobalSelfAttention(256, 256, 64, 8, attention_mechanism=mech,
                               pos_emb_type=pe),
      stax.Relu(), stax.GlobalAvgPool(), stax.Dense(256))
  x1, x2 = _seqs()
  # Without the softmax normalization the attention weights fluctuate more
  # at finite width (errors ~10-15% at these sizes); the analytic values
  # agree with neural-tangents to round-off.
  check_against_mc(net, x1, x2, n_samples=16, tol=0.2, ntk_tol=0.25)


def _text_model(width=256):
  return stax.serial(
      stax.Conv(width, (3,), padding="SAME", b_std=0.2), stax.Relu(),
      stax.GlobalSelfAttention(width, width, 64, 8, b_std=0.1),
      stax.Relu(), stax.AvgPool((2,), padding="SAME"), stax.GlobalAvgPool(),
      stax.Dense(width, b_std=0.1))


def test_masked_text_model_matches_monte_carlo():
  # 1-D conv + attention + pooling on padded sentences of lengths 5, 3, 2..
  x1, x2 = _seqs()
  x1, x2 = _pad(x1, [5, 3, 4, 2]), _pad(x2, [2, 5, 3])
  init_fn, apply_fn, kernel_fn = _text_model()
  f = stax.unmask_fn(lambda p, x, **kw: apply_fn(p, x, mask_constant=PAD,
                                                 **kw))
  x = jnp.concatenate([x1, x2])
  nngp, ntk = mc_kernels(init_fn, f, x, n_samples=12)
  k = kernel_fn(x1, x2, ("nngp", "ntk"), mask_constant=PAD)
  assert rel_err(k.nngp, nngp[:4, 4:]) < 0.1
  assert rel_err(k.ntk, ntk[:4, 4:]) < 0.15
  k11 = kernel_fn(x1, None, "nngp", mask_constant=PAD)
  assert rel_err(k11, nngp[:4, :4]) < 0.1


def test_masking_equals_truncation_for_pointwise_networks():
  # Dense + Relu + GlobalAvgPool: padding with masked positions must give
  # the kernel of the unpadded sequences. References have equal lengths by
  # tiling (a global mean over pairs does not change when every position is
  # repeated equally often).
  x1, x2 = _seqs(n1=2, n2=2, t=6)
  net = stax.serial(stax.Dense(8, b_std=0.3), stax.Relu(),
                    stax.Dense(8, b_std=0.2), stax.Relu(),
                    stax.GlobalAvgPool())
  kernel_fn = net[2]
  l1, l2 = [6, 3], [2, 6]
  k = kernel_fn(_pad(x1, l1), _pad(x2, l2), ("nngp", "ntk"),
                mask_constant=PAD)
  tile = lambda x, n: jnp.tile(x[None, :n], (1, 6 // n, 1))
  for i in range(2):
    for j in range(2):
      ref = kernel_fn(tile(x1[i], l1[i]), tile(x2[j], l2[j]),
                      ("nngp", "ntk"))
      np.testing.assert_allclose(k.nngp[i, j], ref.nngp[0, 0], rtol=1e-5)
      np.testing.assert_allclose(k.ntk[i, j], ref.ntk[0, 0], rtol=1e-5)


def test_apply_fn_returns_masked_array_and_unmask_fn_zeroes():
  x1, _ = _seqs(n1=2, n2=2, t=4)
  x = _pad(x1, [4, 2])
  init_fn, apply_fn, _ = stax.serial(stax.Conv(5, (2,), padding="SAME"),
                                     stax.Relu())
  _, params = init_fn(jax.random.PRNGKey(0), x.shape)
  out = apply_fn(params, x, mask_constant=PAD)
  assert isinstance(out, stax.MaskedArray)
  assert out.mask.shape == (2, 4, 1)
  np.testing.assert_array_equal(np.asarray(out.mask[:, :, 0]),
                                [[0, 0, 0, 0], [0, 0, 1, 1]])
  plain = stax.unmask_fn(apply_fn)(params, x, mask_constant=PAD)
  assert np.all(np.asarray(plain)[1, 2:] == 0)


def test_channel_varying_mask_into_pooling_is_a_clear_error():
  x = jnp.ones((2, 4, 3)).at[0, 1, 0].set(PAD)
  kernel_fn = stax.serial(stax.AvgPool((2,)), stax.GlobalAvgPool())[2]
  with pytest.raises(ValueError, match=r"AvgPool.*varies over channels.*"
                                       r"\(2, 4, 3\)"):
    kernel_fn(x, mask_constant=PAD)


def test_layer_norm_matches_monte_carlo():
  net = stax.serial(stax.Dense(512, b_std=0.5), stax.LayerNorm(),
                    stax.Relu(), stax.Dense(512, b_std=0.1),
                    stax.LayerNorm(axis=(1, 2)), stax.GlobalAvgPool(),
                    stax.Dense(512))
  x1, x2 = _seqs()
  check_against_mc(net, x1, x2, n_samples=12, tol=0.06, ntk_tol=0.1)


def test_index_slices_the_kernel():
  x1, x2 = _seqs(n1=4, t=6)
  base = stax.serial(stax.Conv(4, (2,), padding="SAME"), stax.Relu())
  sliced = stax.serial(base, stax.Index(stax.Slice[:, 1::2, :]))
  k = base[2](x1, x2, "nngp")
  ks = sliced[2](x1, x2, "nngp")
  np.testing.assert_allclose(ks, k[:, :, 1::2, 1::2], rtol=1e-6)
  kb = stax.serial(base, stax.Index(stax.Slice[::2]))[2](x1, x2, "nngp")
  np.testing.assert_allclose(kb, k[::2, ::2], rtol=1e-6)
  k0 = stax.serial(base, stax.Index(stax.Slice[:, 0]))[2](x1, None, "nngp")
  np.testing.assert_allclose(k0, base[2](x1, None, "nngp")[:, :, 0, 0],
                             rtol=1e-6)
