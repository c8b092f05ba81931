"""Benchmark runner: widenets vs neural-tangents 0.6.5, one command.

Collects ``WORKLOADS`` from every ``benchmarks/bench_*.py`` (convention in
benchmarks/README.md) and runs each workload in a fresh subprocess per
library, so that peak memory (``ru_maxrss``) is that workload's alone:

  .venv/bin/python benchmarks/run.py                      # widenets only
  .venv/bin/python benchmarks/run.py --peer .peer/nt/bin/python
  .venv/bin/python benchmarks/run.py --only core --repeat 5 --markdown out.md

(the peer venv comes from ``bash ../shared/tools/reference-nt.sh .peer/nt``).
Per workload and library it reports: ``first`` (the first call: tracing,
compilation and one run), ``run`` (median of ``--repeat`` further calls, each
ended by ``block_until_ready``), ``compile`` (``first - run``), ``process``
(wall time from starting the worker's interpreter to the end of the first
call: startup, imports, setup and first call, i.e. a script that computes the
workload once), peak RSS of the process and its growth over the RSS after
importing the library, and the ratios neural-tangents / widenets (> 1:
widenets is faster / leaner).

``--call user|direct|jit`` (repeatable) says how workloads call ``kernel_fn``
(``BENCH_CALL``, see ``bench_core.user_kernel_fn``): ``user`` (default) as each
library's users do, ``direct`` both as is, ``jit`` both under ``jax.jit(...,
static_argnames='get')``. With more than one, a second table puts the calls
side by side. Every line carries the 1-minute load average when it ran.

This file is also the worker (``--worker MODULE NAME``): it must stay
importable by the peer's older Python stack (jax 0.4.26, numpy < 2), so it
uses only the standard library and imports jax lazily.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MARK = "BENCH_RESULT "


def _maxrss_mib() -> float:
  # Linux reports KiB (macOS bytes; not supported here).
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
  """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _vm_hwm_mib():
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return None


def _block(out):
  import jax
  for leaf in jax.tree_util.tree_leaves(out):
    if hasattr(leaf, "block_until_ready"):
      leaf.block_until_ready()
  return out


def worker(module: str, name: str, lib_name: str, repeat: int) -> dict:
  """Runs one workload in this (fresh) process; returns the measurements."""
  sys.path.insert(0, HERE)
  import jax
  lib = importlib.import_module(lib_name)
  mod = importlib.import_module(module)
  rss_import = _maxrss_mib()
  res = {"module": module, "workload": name, "lib": lib_name,
         "call": os.environ.get("BENCH_CALL", "user"),
         "lib_version": getattr(lib, "__version__", "?"),
         "jax_version": jax.__version__, "device": str(jax.devices()[0])}
  t0 = time.perf_counter()
  made = mod.WORKLOADS[name](lib)
  res["setup_s"] = time.perf_counter() - t0
  if made is None:
    res["skipped"] = True
    return res
  setup, fn = made if isinstance(made, tuple) else (None, made)
  if setup is not None:
    setup()
  t0 = time.perf_counter()
  _block(fn())
  res["first_s"] = time.perf_counter() - t0
  res["first_end_unix"] = time.time()
  # Peak over the timed runs only (compilation excluded): XLA's compiler
  # alone can take hundreds of MiB, which ru_maxrss includes.
  can_reset = _reset_peak()
  times = []
  for _ in range(repeat):
    if setup is not None:
      setup()
    t0 = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - t0)
  res["run_s"] = statistics.median(times)
  res["runs_s"] = times
  res["compile_s"] = max(res["first_s"] - res["run_s"], 0.0)
  res["rss_import_mib"] = rss_import
  res["peak_rss_mib"] = _maxrss_mib()
  res["peak_growth_mib"] = res["peak_rss_mib"] - rss_import
  res["run_peak_mib"] = _vm_hwm_mib() if can_reset else None
  res["cpu_s"] = time.process_time()
  return res


def discover(only=None):
  """``[(module, workload name)]`` of every bench_*.py, filtered by
  substrings ``only`` (matched against ``module:name``)."""
  sys.path.insert(0, HERE)
  found = []
  for path in sorted(glob.glob(os.path.join(HERE, "bench_*.py"))):
    module = os.path.splitext(os.path.basename(path))[0]
    try:
      mod = importlib.import_module(module)
    except Exception as e:  # a broken bench file must not stop the others
      print(f"# cannot import {module}: {type(e).__name__}: {e}",
            file=sys.stderr)
      continue
    for name in getattr(mod, "WORKLOADS", {}):
      key = f"{module}:{name}"
      if only and not any(o in key for o in only):
        continue
      found.append((module, name))
  return found


def run_one(python: str, module: str, name: str, lib: str, repeat: int,
            timeout: float, call: str = "user") -> dict:
  cmd = [python, os.path.abspath(__file__), "--worker", module, name,
         "--lib", lib, "--repeat", str(repeat)]
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  # The repository root too: a worker's sys.path starts at benchmarks/, and
  # without the root it would import whichever widenets is installed (an
  # editable install of another checkout), not this one.
  env["PYTHONPATH"] = os.pathsep.join([HERE, os.path.dirname(HERE)])
  env["BENCH_CALL"] = call
  load = os.getloadavg()[0]
  start = time.time()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=os.path.dirname(HERE))
  except subprocess.TimeoutExpired:
    return {"module": module, "workload": name, "lib": lib, "call": call,
            "error": f"timeout after {timeout:.0f}s"}
  for line in proc.stdout.splitlines():
    if line.startswith(MARK):
      res = json.loads(line[len(MARK):])
      if "first_end_unix" in res:
        res["process_s"] = res["first_end_unix"] - start
      res["load_avg"] = round(max(load, os.getloadavg()[0]), 1)
      return res
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"module": module, "workload": name, "lib": lib, "call": call,
          "error": f"exit {proc.returncode}: {' | '.join(tail)[-400:]}"}


def _fmt(x, unit=""):
  return "-" if x is None else f"{x:.2f}{unit}"


def _fmt3(x):
  return "-" if x is None else f"{x:.3f}"


def _ratio(a, b):
  if a is None or b is None or b <= 0:
    return None
  return a / b


def _get(r, k):
  return None if ("error" in r or r.get("skipped")) else r.get(k)


def table(rows) -> str:
  """Markdown table; one row per workload (and call), widenets vs
  neural-tangents."""
  head = ("| workload | call | wn first s | wn run s | wn process s | "
          "NT first s | NT run s | NT process s | run NT/wn | "
          "first NT/wn | process NT/wn | wn peak MiB (+growth) | "
          "NT peak MiB (+growth) | peak NT/wn | wn / NT run-phase peak MiB | "
          "load |")
  lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
  for (module, name, call), res in rows:
    wn, peer = res.get("widenets", {}), res.get("neural_tangents", {})
    g = _get

    def mem(r):
      if g(r, "peak_rss_mib") is None:
        return r.get("error", "skipped" if r.get("skipped") else "-")[:60]
      return f"{r['peak_rss_mib']:.0f} (+{r['peak_growth_mib']:.0f})"

    loads = [r.get("load_avg") for r in (wn, peer) if r.get("load_avg")]
    lines.append(
        f"| {module.replace('bench_', '')}:{name} | {call} | "
        f"{_fmt(g(wn, 'first_s'))} | {_fmt3(g(wn, 'run_s'))} | "
        f"{_fmt(g(wn, 'process_s'))} | {_fmt(g(peer, 'first_s'))} | "
        f"{_fmt3(g(peer, 'run_s'))} | {_fmt(g(peer, 'process_s'))} | "
        f"{_fmt(_ratio(g(peer, 'run_s'), g(wn, 'run_s')), 'x')} | "
        f"{_fmt(_ratio(g(peer, 'first_s'), g(wn, 'first_s')), 'x')} | "
        f"{_fmt(_ratio(g(peer, 'process_s'), g(wn, 'process_s')), 'x')} | "
        f"{mem(wn)} | {mem(peer) if peer else '-'} | "
        f"{_fmt(_ratio(g(peer, 'peak_rss_mib'), g(wn, 'peak_rss_mib')), 'x')}"
        f" | {_fmt(g(wn, 'run_peak_mib'))} / {_fmt(g(peer, 'run_peak_mib'))} "
        f"| {'-'.join(f'{l:.1f}' for l in loads) or '-'} |")
  return "\n".join(lines)


def calls_table(rows, calls) -> str:
  """Steady-state run time per call mode, side by side, and the ratios that
  issue 15 asks for: widenets under jit vs widenets direct, and
  neural-tangents as its users call it (jitted) vs widenets under jit."""
  by = {}
  for (module, name, call), res in rows:
    by.setdefault((module, name), {})[call] = res
  cols = [f"{lib} {c}" for c in calls for lib in ("wn", "NT")]
  head = ("| workload | " + " | ".join(f"{c} run s" for c in cols) +
          " | wn jit / wn direct | NT jit / wn jit | NT jit / wn direct |")
  lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
  for (module, name), per_call in by.items():
    cells = []
    for c in calls:
      res = per_call.get(c, {})
      for lib in ("widenets", "neural_tangents"):
        cells.append(_fmt3(_get(res.get(lib, {}), "run_s")))
    run = lambda c, lib: _get(per_call.get(c, {}).get(lib, {}), "run_s")
    wn_jit, wn_direct = run("jit", "widenets"), run("direct", "widenets")
    nt_jit = run("jit", "neural_tangents")
    lines.append(
        f"| {module.replace('bench_', '')}:{name} | " + " | ".join(cells) +
        f" | {_fmt(_ratio(wn_jit, wn_direct), 'x')} | "
        f"{_fmt(_ratio(nt_jit, wn_jit), 'x')} | "
        f"{_fmt(_ratio(nt_jit, wn_direct), 'x')} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--peer", default=None,
                 help="python of the neural-tangents 0.6.5 venv")
  p.add_argument("--only", action="append", default=None,
                 help="substring of 'bench_module:workload' (repeatable)")
  p.add_argument("--repeat", type=int, default=3)
  p.add_argument("--timeout", type=float, default=1800)
  p.add_argument("--json", default=None, help="write all results here")
  p.add_argument("--markdown", default=None, help="write the table here")
  p.add_argument("--list", action="store_true")
  p.add_argument("--worker", nargs=2, metavar=("MODULE", "NAME"))
  p.add_argument("--lib", default="widenets")
  p.add_argument("--call", action="append", default=None,
                 choices=("user", "direct", "jit"),
                 help="how kernel_fn is called (repeatable; default user)")
  args = p.parse_args(argv)
  calls = args.call or ["user"]

  if args.worker:
    res = worker(*args.worker, args.lib, args.repeat)
    print(MARK + json.dumps(res), flush=True)
    return

  work = discover(args.only)
  if args.list:
    print("\n".join(f"{m}:{n}" for m, n in work))
    return
  libs = [(sys.executable, "widenets")]
  if args.peer:
    libs.append((args.peer, "neural_tangents"))
  print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        flush=True)
  rows = []
  for (module, name), call in [(w, c) for w in work for c in calls]:
    res = {}
    for python, lib in libs:
      r = run_one(python, module, name, lib, args.repeat, args.timeout, call)
      res[lib] = r
      if "error" in r:
        msg = f"ERROR {r['error']}"
      elif r.get("skipped"):
        msg = "skipped (not supported by this library)"
      else:
        msg = (f"first {r['first_s']:8.2f}s  run {r['run_s']:8.3f}s  "
               f"process {_fmt(r.get('process_s'))}s  peak "
               f"{r['peak_rss_mib']:6.0f} MiB (+{r['peak_growth_mib']:.0f}, "
               f"runs {_fmt(r.get('run_peak_mib'))})  "
               f"jax {r['jax_version']}  load {r.get('load_avg')}")
      print(f"{module}:{name:36s} {call:6s} {lib:16s} {msg}", flush=True)
    rows.append(((module, name, call), res))
  md = table(rows)
  if len(calls) > 1:
    md += "\n\n" + calls_table(rows, calls)
  print()
  print(md)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(md + "\n")
  if args.json:
    with open(args.json, "w") as f:
      json.dump([{"module": m, "workload": n, "call": c, **res}
                 for (m, n, c), res in rows], f, indent=1)


if __name__ == "__main__":
  main()
