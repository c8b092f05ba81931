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

os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"
jax.config.update('jax_numpy_rank_promotion', 'raise')
