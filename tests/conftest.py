"""Suite-wide settings: implicit rank promotion is an error.

Many JAX codebases (neural-tangents' own tests among them) run with
`jax_numpy_rank_promotion='raise'`; the library must be clean under it, so the
whole suite runs with it and every implicit broadcast, in the library or in a
test, fails loudly. The environment variable carries the setting into the
subprocesses some tests start (examples, CLI, stores). The library itself
never sets this option.
"""
import os

import jax
import pytest

os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
jax.config.update('jax_numpy_rank_promotion', 'raise')


# The heaviest cases of the default suite (10-35 s each on 2 cores, measured
# by `make test --durations`), kept for `pytest -m slow` so that the default
# run stays within its time budget; each has a cheaper sibling that stays in
# the default run (another activation, block size, framework or resume test).
_SLOW = (
    "tests/predict/test_large_stores.py::test_sigkill_mid_variance_solve_resumes",
    "tests/empirical/test_frameworks.py::test_flax_linen_cnn",
    "tests/stax/test_chunking.py::test_any_block_size",
    "tests/empirical/test_implementations.py::test_ntk_vector_products_x2_none_uses_symmetry[axes0-9-cnn]",
    "tests/stax/test_activations_mc.py::test_mixed_networks_match_monte_carlo[smooth]",
    "tests/empirical/test_conv_grad.py::test_ntk_of_strided_grouped_nested_convs[0-1]",
    "tests/stax/test_activations.py::test_grad_at_zero_input_is_finite_and_matches_fd[Tanh]",
)


@pytest.fixture
def packed_small():
  """x2=None calls run packed at any size (`tests.stax.mc.packed_x2_none`):
  the tests that check the packed layout use small inputs."""
  from tests.stax.mc import packed_x2_none
  with packed_x2_none():
    yield


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.nodeid.startswith(_SLOW):
      item.add_marker(pytest.mark.slow)
