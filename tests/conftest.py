"""Suite-wide settings: implicit rank promotion is an error.

Many JAX codebases (neural-tangents' own tests among them) run with
`jax_numpy_rank_promotion='raise'`; the library must be clean under it, so the
whole suite runs with it and every implicit broadcast, in the library or in a
test, fails loudly. The library itself never sets this option.
"""
import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')
