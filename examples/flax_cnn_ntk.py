"""The empirical NTK of a Flax CNN, and how it approaches the infinite one.

`widenets.empirical_ntk_fn` works on any ``f(params, x)``, so a Flax module's
``apply`` can be used directly. The empirical NTK of a finite CNN (one draw
of its parameters) is compared with the infinite-width NTK of the same
architecture written in `widenets.stax` (NTK parameterization: Flax's
default init differs, so the Flax model here uses unit-variance weights and
scales activations by 1/sqrt(fan_in) itself).

    python examples/flax_cnn_ntk.py [--small]
"""
import argparse
import sys

import numpy as np


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--small", action="store_true", help="fewer, narrower nets")
  args = p.parse_args(argv)
  try:
    import flax.linen as nn
  except ImportError:
    print("skipped: flax is not installed (pip install 'widenets[examples]').")
    return 0
  import jax
  import jax.numpy as jnp

  import widenets as nt
  from widenets import stax

  widths = (64, 256) if args.small else (64, 256, 1024)

  class CNN(nn.Module):
    """Conv(3x3, SAME) - ReLU - global average - Dense(1), NTK-parameterized."""
    width: int

    @nn.compact
    def __call__(self, x):
      init = nn.initializers.normal(1.0)
      fan_in = 9 * x.shape[-1]
      h = nn.Conv(self.width, (3, 3), padding="SAME", use_bias=False,
                  kernel_init=init)(x) / jnp.sqrt(fan_in)
      h = jnp.mean(nn.relu(h), axis=(1, 2))
      return nn.Dense(1, use_bias=False, kernel_init=init)(h) / jnp.sqrt(
          self.width)

  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 2))
  _, _, kernel_fn = stax.serial(stax.Conv(1, (3, 3), padding="SAME"),
                                stax.Relu(), stax.GlobalAvgPool(),
                                stax.Dense(1))
  exact = np.asarray(kernel_fn(x, None, "ntk"))
  for width in widths:
    model = CNN(width)
    params = model.init(jax.random.PRNGKey(1), x)
    ntk_fn = nt.empirical_ntk_fn(lambda p, z: model.apply(p, z),
                                 vmap_axes=0)
    emp = np.asarray(ntk_fn(x, None, params))
    err = np.linalg.norm(emp - exact) / np.linalg.norm(exact)
    print(f"width {width:5d}: empirical NTK {emp.shape}, relative distance "
          f"to the infinite-width NTK {err:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
