"""neural-tangents' own kernel programs, compiled by this JAX: whose compile
time is it?

neural-tangents 0.6.5 runs only on old JAX (0.4.26 in its venv), whose XLA
compiles faster than this JAX's. To tell JAX's part of a first call under
``jax.jit`` from ours, this script exports neural-tangents' jitted
``kernel_fn`` (its StableHLO, from ``jax.experimental.export`` in the peer's
venv) and compiles that very program with this JAX, next to widenets'
program for the same call, in fresh processes, interleaved:

* ``erf3_x1_x2`` / ``erf3_x2_none``: 3 x (Dense(512, 1.5, 0.05) + Erf) +
  Dense(1), 1000 x 784 inputs, nngp + ntk (`bench_firstcall`'s workloads);
* ``erf2_sweep_net``: one network of `bench_sweep`'s W_std sweep
  (2 x (Dense(512, 1.3, 0.05) + Erf) + Dense(1)), NTK of 50 x 32, x2=None.

Per program: XLA compile seconds (``lower().compile()``), the first and a
later run, and the number of HLO instructions XLA compiled (optimized
module, fusion bodies included), since XLA:CPU's compile time here grows
about linearly with it (benchmarks/ISSUE15.md, section 15)::

  .venv/bin/python benchmarks/nt_program_on_new_jax.py \\
      --peer .peer/nt/bin/python --repeat 3

The peer's ``jax.experimental.export`` imports ``absl.logging`` only to log;
its venv lacks absl, so the exporting process gets a silent stand-in module.
Standard library only in the parent process.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time

MARK = "NTPROG "
WORKLOADS = ("erf3_x1_x2", "erf3_x2_none", "erf2_sweep_net")


def _inputs(workload: str):
  """``(x1, x2 or None, get)`` of the workload."""
  import numpy as np
  if workload == "erf2_sweep_net":
    x1 = np.random.RandomState(0).randn(50, 32).astype(np.float32)
    return x1, None, ("ntk",)
  x1 = np.random.RandomState(0).randn(1000, 784).astype(np.float32)
  x2 = (np.random.RandomState(1).randn(1000, 784).astype(np.float32)
        if workload == "erf3_x1_x2" else None)
  return x1, x2, ("nngp", "ntk")


def _kernel_fn(workload: str, stax):
  w, depth = (1.3, 2) if workload == "erf2_sweep_net" else (1.5, 3)
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(512, W_std=w, b_std=0.05), stax.Erf()]
  return stax.serial(*layers, stax.Dense(1, W_std=w, b_std=0.05))[2]


def _export(workload: str, path: str) -> dict:
  """In the peer's venv: neural-tangents' jitted call, exported."""
  import types
  absl = types.ModuleType("absl")
  absl.logging = types.SimpleNamespace(
      vlog_is_on=lambda *a, **k: False,
      **{n: (lambda *a, **k: None) for n in (
          "info", "debug", "warning", "error", "vlog", "log")})
  sys.modules.setdefault("absl", absl)
  sys.modules.setdefault("absl.logging", absl.logging)
  import jax
  from jax.experimental import export
  from neural_tangents import stax
  kernel_fn = _kernel_fn(workload, stax)
  x1, x2, get = _inputs(workload)
  fn = jax.jit(lambda a, b: tuple(kernel_fn(a, b if x2 is not None else None,
                                            get)))
  exp = export.export(fn)(x1, x1 if x2 is None else x2)
  with open(path, "wb") as f:
    pickle.dump({"module": bytes(exp.mlir_module_serialized),
                 "version": exp.mlir_module_serialization_version,
                 "kept": tuple(exp.module_kept_var_idx),
                 "outs": [(tuple(a.shape), str(a.dtype))
                          for a in exp.out_avals]}, f)
  return {"jax": jax.__version__}


def _hlo_instructions(text: str) -> int:
  return sum(1 for line in text.splitlines()
             if line.startswith("  ") and " = " in line)


def _time(fn, args) -> dict:
  import jax
  lowered = jax.jit(fn).trace(*args).lower()
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  first_run_s = time.perf_counter() - t
  runs = []
  for _ in range(5):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    runs.append(time.perf_counter() - t)
  return {"compile_s": compile_s, "first_run_s": first_run_s,
          "run_s": statistics.median(runs),
          "hlo_instructions": _hlo_instructions(compiled.as_text())}


def _compile_peer(workload: str, path: str) -> dict:
  """In this venv: the exported neural-tangents program, compiled."""
  import jax
  import jax.numpy as jnp
  from jax import export
  with open(path, "rb") as f:
    saved = pickle.load(f)
  x1, x2, _ = _inputs(workload)
  args = (x1, x1 if x2 is None else x2)
  exp = export.Exported(
      fun_name="neural_tangents_kernel_fn",
      in_tree=jax.tree_util.tree_structure((args, {})),
      in_avals=tuple(jax.typeof(jnp.asarray(a)) for a in args),
      out_tree=jax.tree_util.tree_structure((0,) * len(saved["outs"])),
      out_avals=tuple(jax.typeof(jnp.zeros(s, d)) for s, d in saved["outs"]),
      _has_named_shardings=False, _in_named_shardings=(None, None),
      _out_named_shardings=(None,) * len(saved["outs"]),
      in_shardings_hlo=(None, None),
      out_shardings_hlo=(None,) * len(saved["outs"]), nr_devices=1,
      platforms=("cpu",), ordered_effects=(), unordered_effects=(),
      disabled_safety_checks=(), mlir_module_serialized=saved["module"],
      calling_convention_version=saved["version"],
      module_kept_var_idx=saved["kept"], uses_global_constants=False,
      _get_vjp=None)
  jax.block_until_ready(jnp.zeros(3) + 1)  # JAX's own start-up, untimed
  return _time(exp.call, args)


def _compile_ours(workload: str) -> dict:
  import jax
  import jax.numpy as jnp
  from widenets import stax
  kernel_fn = _kernel_fn(workload, stax)
  x1, x2, get = _inputs(workload)
  jax.block_until_ready(jnp.zeros(3) + 1)
  if x2 is None:
    return _time(lambda a: tuple(kernel_fn(a, None, get)), (x1,))
  return _time(lambda a, b: tuple(kernel_fn(a, b, get)), (x1, x2))


def _run(python: str, *args: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([python, os.path.abspath(__file__), *args],
                       capture_output=True, text=True, env=env, check=True)
  line = [l for l in out.stdout.splitlines() if l.startswith(MARK)][-1]
  return json.loads(line[len(MARK):])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--worker", nargs=3, metavar=("KIND", "WORKLOAD", "PATH"))
  ap.add_argument("--peer", help="neural-tangents' venv python")
  ap.add_argument("--repeat", type=int, default=3)
  args = ap.parse_args()
  if args.worker:
    kind, workload, path = args.worker
    res = {"export": lambda: _export(workload, path),
           "peer": lambda: _compile_peer(workload, path),
           "ours": lambda: _compile_ours(workload)}[kind]()
    print(MARK + json.dumps(res), flush=True)
    return
  if not args.peer:
    ap.error("--peer is required")
  print("| workload | program (compiled by this JAX) | XLA compile s | "
        "first run s | later run s | HLO instructions |")
  print("|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for workload in WORKLOADS:
      path = os.path.join(tmp, f"{workload}.pkl")
      peer_jax = _run(args.peer, "--worker", "export", workload, path)["jax"]
      rows = {"ours": [], "peer": []}
      for _ in range(args.repeat):
        for kind in rows:  # interleaved: both see the same load
          rows[kind].append(_run(sys.executable, "--worker", kind, workload,
                                 path))
      for kind, label in (("ours", "widenets"),
                          ("peer", f"neural-tangents' (exported by JAX "
                                   f"{peer_jax})")):
        rs = rows[kind]
        fmt = lambda key: " / ".join(f"{r[key]:.3f}" for r in rs)
        print(f"| {workload} | {label} | {fmt('compile_s')} | "
              f"{fmt('first_run_s')} | {fmt('run_s')} | "
              f"{rs[0]['hlo_instructions']} |", flush=True)


if __name__ == "__main__":
  main()
