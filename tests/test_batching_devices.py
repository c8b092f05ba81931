"""batch over several devices (4 forced host devices, in a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    assert jax.local_device_count() == 4, jax.devices()
    from widenets import stax
    from widenets.batching import batch
    _, _, kf = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.05), stax.Relu(),
                           stax.Dense(1))
    rng = np.random.RandomState(0)
    x = rng.randn(10, 4, 3).astype(np.float32)
    y = rng.randn(5, 4, 3).astype(np.float32)
    for device_count, batch_size, x2 in [(-1, 3, None), (-1, 3, y),
                                         (-1, 0, None), (3, 0, y),
                                         (0, 3, None)]:
        if True:
          bf = batch(kf, batch_size, device_count=device_count)
          out = bf(x, x2)
          ref = kf(x, x2)
          for a, b in zip(jax.tree_util.tree_leaves(ref),
                          jax.tree_util.tree_leaves(out)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
          n_dev = {-1: 4, 0: 1, 3: 3}[device_count]
          run = bf.last_run
          assert run.devices == n_dev
          # Blocks went round-robin to every device used.
          assert len(run.per_device) == min(n_dev, run.computed), run
    print("OK")
    """)


def test_several_devices(tmp_path):
  script = tmp_path / "devices.py"
  script.write_text(_SCRIPT)
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, str(script)], env=env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "OK" in res.stdout
