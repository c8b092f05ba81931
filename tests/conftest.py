"""Suite-wide settings: implicit rank promotion is reported.

Many JAX codebases (neural-tangents' own tests among them) run with
`jax_numpy_rank_promotion='raise'`. The library must be clean under it
(tests/robustness and the conformance suite exercise it); the suite runs with
'warn' until the test models' own implicit broadcasts are made explicit
(issue 14), so every implicit broadcast shows up as a warning. The library
itself never sets this option.
"""
import jax

jax.config.update('jax_numpy_rank_promotion', 'warn')
