"""First calls (issue 15, item 4): where a first ``kernel_fn`` call's time goes.

Three workloads, each built the same way for widenets and neural-tangents
0.6.5 and called as ``BENCH_CALL`` says (``direct`` or ``jit``, see
`bench_core.user_kernel_fn`):

* ``relu20_none``: 20 x (Dense(512, 1.4, 0.1) + Relu) + Dense(1), 2000 x 784
  inputs, ``x2=None``, nngp + ntk;
* ``erf3_x1_x2``: 3 x (Dense(512, 1.5, 0.05) + Erf) + Dense(1), 1000 x 784
  against 1000 x 784, nngp + ntk;
* ``erf3_x2_none``: the same network on 1000 x 784, ``x2=None``;
* ``cnn3_x1_x2``: 3 x (Conv(256, 3x3, SAME, 1.4, 0.1) + Relu) + GlobalAvgPool
  + Dense(1), 32 against 32 8x8x3 images, nngp + ntk.

``FIRSTCALL_N`` (environment) changes the erf3 workloads' 1000 samples
(e.g. 2000 for the steady-state checks). As `WORKLOADS` they run through ``benchmarks/run.py``. Run as a script,
each (workload, library, call) runs in a fresh process (first calls need
one) that reports the first call's wall and CPU seconds, the seconds JAX
spent tracing, lowering and in XLA's compiler (summed over every compile of
the call, from `jax.monitoring` duration events), the steady-state median,
and the jaxpr of the call (equations in all nested jaxprs, nested ``jit``
calls among them)::

  .venv/bin/python benchmarks/bench_firstcall.py \\
      --peer .peer/nt/bin/python --call direct --call jit --repeat 3

``--call phases`` instead times ``jax.jit(...)``'s ``trace``, ``lower`` and
``compile`` apart in CPU seconds. ``--base DIR`` runs another checkout of
widenets (e.g. the commit before a change) side by side.

Every line carries the 1-minute load average when it ran (the machine is
shared; CPU seconds are less sensitive to load than wall seconds).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "FIRSTCALL "
_EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
           "/jax/core/compile/backend_compile_duration": "compile_s"}


def _x(n, dim, seed):
  return np.random.RandomState(seed).randn(n, dim).astype(np.float32)


def _images(n, seed):
  return np.random.RandomState(seed).randn(n, 8, 8, 3).astype(np.float32)


def _relu20(lib):
  stax = lib.stax
  layers = []
  for _ in range(20):
    layers += [stax.Dense(512, W_std=1.4, b_std=0.1), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1))[2], (_x(2000, 784, 0), None)


def _erf3_net(lib):
  stax = lib.stax
  layers = []
  for _ in range(3):
    layers += [stax.Dense(512, W_std=1.5, b_std=0.05), stax.Erf()]
  return stax.serial(*layers, stax.Dense(1, W_std=1.5, b_std=0.05))[2]


def _erf3_n() -> int:
  return int(os.environ.get("FIRSTCALL_N", 1000))


def _erf3(lib):
  n = _erf3_n()
  return _erf3_net(lib), (_x(n, 784, 0), _x(n, 784, 1))


def _erf3_none(lib):
  return _erf3_net(lib), (_x(_erf3_n(), 784, 0), None)


def _cnn3(lib):
  stax = lib.stax
  layers = []
  for _ in range(3):
    layers += [stax.Conv(256, (3, 3), padding="SAME", W_std=1.4, b_std=0.1),
               stax.Relu()]
  net = stax.serial(*layers, stax.GlobalAvgPool(),
                    stax.Dense(1, W_std=1.4, b_std=0.1))[2]
  return net, (_images(32, 0), _images(32, 1))


NETS = {"relu20_none": _relu20, "erf3_x1_x2": _erf3,
        "erf3_x2_none": _erf3_none, "cnn3_x1_x2": _cnn3}


def _workload(net):
  def make(lib):
    sys.path.insert(0, HERE)
    from bench_core import user_kernel_fn
    kernel_fn, (x1, x2) = net(lib)
    kernel_fn = user_kernel_fn(lib, kernel_fn)
    return lambda: kernel_fn(x1, x2, ("nngp", "ntk"))
  return make


WORKLOADS = {name: _workload(net) for name, net in NETS.items()}


def _subjaxprs(value):
  """Jaxprs held by an equation parameter (ClosedJaxpr, Jaxpr, tuples)."""
  if hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _subjaxprs(v)


def count_eqns(jaxpr, counts):
  """Adds every equation of ``jaxpr`` and its nested jaxprs to ``counts``
  (primitive name -> number)."""
  for eqn in jaxpr.eqns:
    counts[eqn.primitive.name] += 1
    for param in eqn.params.values():
      for sub in _subjaxprs(param):
        count_eqns(sub, counts)
  return counts


def phases(workload: str, lib_name: str) -> dict:
  """CPU seconds of tracing, lowering and compiling ``jax.jit`` of the
  workload apart (``jit(...).trace``, ``.lower``, ``.compile``), in a fresh
  process: less sensitive to the machine's load than wall seconds."""
  import importlib
  import jax
  lib = importlib.import_module(lib_name)
  net, (x1, x2) = NETS[workload](lib)
  fn = jax.jit(lambda a, b: net(a, b, ("nngp", "ntk")))
  res = {"workload": workload, "lib": lib_name, "call": "phases"}
  c0 = time.process_time()
  if hasattr(fn, "trace"):
    traced = fn.trace(x1, x2)
    c1 = time.process_time()
    lowered = traced.lower()
  else:  # older JAX (the peer's): trace and lower in one step
    lowered = fn.lower(x1, x2)
    c1 = c0
  c2 = time.process_time()
  compiled = lowered.compile()
  c3 = time.process_time()
  jax.block_until_ready(compiled(x1, x2))
  res.update(trace_cpu_s=c1 - c0, lower_cpu_s=c2 - c1, compile_cpu_s=c3 - c2,
             hlo_lines=compiled.as_text().count("\n"))
  return res


def worker(workload: str, lib_name: str, call: str, repeat: int) -> dict:
  if call == "phases":
    return phases(workload, lib_name)
  os.environ["BENCH_CALL"] = call
  t_start = time.perf_counter()
  import importlib
  import jax
  import jax.monitoring
  lib = importlib.import_module(lib_name)
  sums = collections.Counter()
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: sums.update(
          {_EVENTS[event]: secs}) if event in _EVENTS else None)
  run = WORKLOADS[workload](lib)
  res = {"workload": workload, "lib": lib_name, "call": call,
         "jax": jax.__version__}
  res["import_setup_s"] = time.perf_counter() - t_start
  sums.clear()
  c0, t0 = time.process_time(), time.perf_counter()
  jax.block_until_ready(run())
  res["first_s"] = time.perf_counter() - t0
  res["first_cpu_s"] = time.process_time() - c0
  res.update({k: sums.get(k, 0.0) for k in _EVENTS.values()})
  times, cpus = [], []
  for _ in range(repeat):
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
  res["run_s"] = statistics.median(times) if times else None
  res["run_cpu_s"] = statistics.median(cpus) if cpus else None
  res["run_min_s"] = min(times) if times else None
  res["run_min_cpu_s"] = min(cpus) if cpus else None
  try:
    net, (x1, x2) = NETS[workload](lib)
    jaxpr = jax.make_jaxpr(
        lambda a, b: net(a, b, ("nngp", "ntk")))(x1, x2)
    counts = count_eqns(jaxpr.jaxpr, collections.Counter())
    res["eqns"] = sum(counts.values())
    res["jit_calls"] = counts.get("pjit", 0) + counts.get("jit", 0)
    res["top"] = counts.most_common(8)
  except Exception as e:  # noqa: BLE001 - counts are a side note
    res["eqns_error"] = f"{type(e).__name__}: {e}"[:200]
  return res


def _fmt(x):
  return "-" if x is None else f"{x:.2f}"


def _fmt3(x):
  return "-" if x is None else f"{x:.3f}"


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "LIB", "CALL"))
  ap.add_argument("--peer", default=None)
  ap.add_argument("--only", action="append", default=None)
  ap.add_argument("--call", action="append", default=None)
  ap.add_argument("--repeat", type=int, default=3)
  ap.add_argument("--json", default=None, help="append raw results here")
  ap.add_argument("--base", default=None,
                  help="another checkout of widenets to run side by side "
                       "(e.g. the commit before a change)")
  args = ap.parse_args()
  if args.worker:
    res = worker(*args.worker, repeat=args.repeat)
    print(MARK + json.dumps(res), flush=True)
    return
  root = os.path.dirname(HERE)
  libs = [(sys.executable, "widenets", root, "widenets")]
  if args.base:
    libs.insert(0, (sys.executable, "widenets", os.path.abspath(args.base),
                    "widenets (base)"))
  if args.peer:
    libs.append((args.peer, "neural_tangents", root, "neural_tangents"))
  print("| workload | call | lib | first wall / CPU s | trace | lower | "
        "XLA compile | steady wall / CPU s: median (min) | eqns (nested jit) | load |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for workload in NETS:
    if args.only and not any(o in workload for o in args.only):
      continue
    for call in args.call or ["direct", "jit"]:
      for python, lib, src, label in libs:
        load = os.getloadavg()[0]
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
            [os.path.join(src, "benchmarks"), src]))
        proc = subprocess.run(
            [python, os.path.join(src, "benchmarks", "bench_firstcall.py"),
             "--worker", workload, lib, call, "--repeat", str(args.repeat)],
            capture_output=True, text=True, env=env, cwd=src)
        line = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
        if not line:
          print(f"| {workload} | {call} | {label} | error: "
                f"{proc.stderr.strip()[-300:]} |")
          continue
        r = json.loads(line[0][len(MARK):])
        r["load"] = round(max(load, os.getloadavg()[0]), 1)
        r["label"] = label
        if args.json:
          with open(args.json, "a") as f:
            f.write(json.dumps(r) + "\n")
        if call == "phases":
          print(f"| {workload} | {call} | {label} | CPU: trace "
                f"{_fmt(r['trace_cpu_s'])}, lower {_fmt(r['lower_cpu_s'])} "
                f"(0 and trace + lower on the peer's JAX), "
                f"XLA compile {_fmt(r['compile_cpu_s'])} | HLO lines "
                f"{r['hlo_lines']} | {r['load']} |", flush=True)
          continue
        print(f"| {workload} | {call} | {label} | {_fmt(r['first_s'])} / "
              f"{_fmt(r['first_cpu_s'])} | {_fmt(r['trace_s'])} | "
              f"{_fmt(r['lower_s'])} | {_fmt(r['compile_s'])} | "
              f"{_fmt3(r['run_s'])} / {_fmt3(r['run_cpu_s'])} (min "
              f"{_fmt3(r['run_min_s'])} / {_fmt3(r['run_min_cpu_s'])}) | "
              f"{r.get('eqns', '-')} ({r.get('jit_calls', '-')}) | "
              f"{r['load']} |", flush=True)


if __name__ == "__main__":
  main()
