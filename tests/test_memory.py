"""`widenets.memory`: importing widenets leaves the process's allocator alone,
and the opt-in `trim` frees only free memory (results unchanged)."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import widenets
from widenets import memory, stax

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Counts glibc's malloc arenas after a JAX computation (XLA's worker threads
# allocate); with M_ARENA_MAX forced to 1 there would be exactly one.
_COUNT_ARENAS = """
import ctypes, os, tempfile
import widenets, numpy as np
from widenets import stax
kf = stax.serial(stax.Dense(8), stax.Erf(), stax.Dense(1))[2]
k = kf(np.ones((300, 20), np.float32), np.ones((200, 20), np.float32), "nngp")
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
path = tempfile.mktemp()
f = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
print(open(path).read().count("<heap nr="))
os.remove(path)
"""

# Records every mallopt/malloc_trim call the import makes: the C functions
# are reached through ctypes.CDLL, whose attribute lookups are wrapped here.
_RECORD_CALLS = """
import ctypes
calls = []
class Recording(ctypes.CDLL):
  def __getattr__(self, name):
    fn = super().__getattr__(name)
    if name in ("mallopt", "malloc_trim"):
      calls.append(name)
    return fn
  def __getitem__(self, name):
    if name in ("mallopt", "malloc_trim"):
      calls.append(name)
    return super().__getitem__(name)
ctypes.CDLL = Recording
import numpy as np
import widenets
from widenets import stax
kf = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(1))[2]
kf(np.ones((600, 20), np.float32), None, "ntk")
print(len(calls))
"""


def _run(code):
  env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, check=True)
  return out.stdout.split()


def test_import_and_kernel_calls_touch_no_allocator():
  assert _run(_RECORD_CALLS) == ["0"]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_import_keeps_glibcs_arenas():
  (arenas,) = _run(_COUNT_ARENAS)
  assert int(arenas) > 1  # XLA's threads got their own arenas, as without us


def test_no_private_memory_module():
  assert not hasattr(widenets, "_memory")
  assert widenets.memory is memory and memory.__all__ == ["trim"]


def test_trim_returns_bool_and_keeps_results():
  kernel_fn = stax.serial(stax.Dense(16), stax.Erf(), stax.Dense(1))[2]
  x = np.random.RandomState(0).randn(40, 5).astype(np.float32)
  before = kernel_fn(x, None, ("nngp", "ntk"))
  first = memory.trim()
  assert isinstance(first, bool)
  assert isinstance(memory.trim(), bool)
  after = kernel_fn(x, None, ("nngp", "ntk"))
  for a, b in zip(before, after):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Arrays alive across the trim are untouched.
  assert np.isfinite(np.asarray(before.nngp)).all()


@pytest.mark.skipif(GLIBC, reason="non-glibc platforms only")
def test_trim_is_a_no_op_without_glibc():
  assert memory.trim() is False
