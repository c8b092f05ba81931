"""The architecture spec parser: safe, literal-only, clear errors."""
import numpy as np
import pytest

from widenets import spec, stax


def test_spec_builds_the_same_kernel_as_stax():
  x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
  _, _, k_spec = spec.parse("Dense(64, W_std=1.5, b_std=0.05) Erf Dense(1)")
  _, _, k_ref = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Erf(),
                            stax.Dense(1))
  np.testing.assert_allclose(k_spec(x, None, "ntk"), k_ref(x, None, "ntk"),
                             rtol=1e-6)


def test_bare_padding_name_is_the_padding_keyword():
  calls = spec.layer_calls("Conv(64,(3,3),SAME) relu, GlobalAvgPool Dense(10)")
  assert calls == [("Conv", (64, (3, 3)), {"padding": "SAME"}),
                   ("Relu", (), {}), ("GlobalAvgPool", (), {}),
                   ("Dense", (10,), {})]
  x = np.random.default_rng(1).standard_normal((2, 4, 4, 1)).astype(
      np.float32)
  k = spec.parse("Conv(8,(3,3),SAME) Relu GlobalAvgPool Dense(1)")[2]
  assert k(x, None, "nngp").shape == (2, 2)


@pytest.mark.parametrize("bad, words", [
    ("Dense(10) Frobnicate", ["unknown layer 'Frobnicate'", "Dense"]),
    ("Dense(__import__('os').getcwd())", ["not a literal"]),
    ("Dense(10", ["unclosed"]),
    ("Dense(10))", ["unbalanced"]),
    ("Dense(x.y)", ["not a literal"]),
    ("serial(Dense(1))", ["unknown layer 'serial'"]),
    ("Dense(10)(3)", ["not a layer"]),
    ("Dense(*[1])", ["*args"]),
    ("Dense(10, bogus=1)", ["Dense(10, bogus=1)", "bogus"]),
    ("   ", ["empty"]),
])
def test_bad_specs_raise_a_clear_spec_error(bad, words):
  with pytest.raises(spec.SpecError) as e:
    spec.parse(bad)
  for w in words:
    assert w in str(e.value)
