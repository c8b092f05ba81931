"""Suite-wide settings: the library must be clean under strict rank promotion.

Many JAX codebases (neural-tangents' own tests among them) run with
`jax_numpy_rank_promotion='raise'`; running our suite the same way keeps
implicit broadcasting out of the library. The library itself never sets it.
"""
import jax

jax.config.update('jax_numpy_rank_promotion', 'raise')
