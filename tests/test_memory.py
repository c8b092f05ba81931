"""`widenets._memory`: glibc heap trimming and the single malloc arena, their
opt-outs, and that neither changes results."""
import os
import platform
import subprocess
import sys

import pytest

from widenets._memory import release_free_memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Counts glibc's arenas after a JAX computation (XLA's threads allocate).
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
print(open(path).read().count("<heap nr="), float(k.sum()))
os.remove(path)
"""


def _run(code, **env):
  full = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
  full.update(JAX_PLATFORMS="cpu", **env)
  out = subprocess.run([sys.executable, "-c", code], env=full,
                       capture_output=True, text=True, check=True)
  return out.stdout.split()


def test_release_free_memory_is_harmless():
  release_free_memory()
  release_free_memory()


def test_opt_out_turns_both_off():
  out = _run("import widenets._memory as m; import widenets; "
             "print(m._libc(), m.configure_allocator())",
             WIDENETS_MALLOC_TRIM="0")
  assert out == ["False", "False"]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_one_arena_by_default_and_same_numbers():
  arenas, total = _run(_COUNT_ARENAS)
  assert int(arenas) == 1
  arenas_off, total_off = _run(_COUNT_ARENAS, WIDENETS_MALLOC_TRIM="0")
  assert int(arenas_off) > 1  # XLA's threads got their own arenas
  assert float(total) == float(total_off)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_users_malloc_arena_max_wins():
  out = _run("import widenets._memory as m; print(m.configure_allocator())",
             MALLOC_ARENA_MAX="4")
  assert out == ["False"]
