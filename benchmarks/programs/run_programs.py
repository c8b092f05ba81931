"""Times the end-to-end programs with widenets and neural-tangents 0.6.5.

Each program runs in a fresh process per library (interleaved, so both see
the same machine load); the table gives whole-process wall time (interpreter
start to exit), the process's CPU time (user + system, all threads; less
sensitive than wall time to other load on a shared machine), the phases the
program reports, the 1-minute load average, and the largest relative
difference of the numbers the two libraries computed::

  .venv/bin/python benchmarks/programs/run_programs.py \\
      --peer .peer/nt/bin/python [--only cookbook] [--markdown out.md]

Uses only the standard library (it is the parent process; the programs
import the libraries).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = ("cookbook", "learning_curve", "phase_diagram")
MARK = "RESULT "


def _children_cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_CHILDREN)
  return r.ru_utime + r.ru_stime


def run(python: str, program: str, lib: str, timeout: float) -> dict:
  """Runs ``program`` with ``lib`` in a fresh ``python``; its timings."""
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  # The programs import widenets from the repository root.
  env["PYTHONPATH"] = os.path.dirname(os.path.dirname(HERE))
  load = os.getloadavg()[0]
  cpu0, t0 = _children_cpu(), time.perf_counter()
  try:
    proc = subprocess.run(
        [python, os.path.join(HERE, f"{program}.py"), "--lib", lib],
        capture_output=True, text=True, env=env, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timeout after {timeout:.0f}s"}
  res = {"wall_s": time.perf_counter() - t0, "cpu_s": _children_cpu() - cpu0,
         "load": round(max(load, os.getloadavg()[0]), 1)}
  for line in proc.stdout.splitlines():
    if line.startswith(MARK):
      res.update(json.loads(line[len(MARK):]))
      return res
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"error": f"exit {proc.returncode}: {' | '.join(tail)[-300:]}"}


def _flat(x, prefix=""):
  if isinstance(x, dict):
    for k, v in x.items():
      yield from _flat(v, f"{prefix}{k}.")
  elif isinstance(x, (list, tuple)):
    for i, v in enumerate(x):
      yield from _flat(v, f"{prefix}{i}.")
  else:
    yield prefix.rstrip("."), x


def max_rel_diff(a: dict, b: dict):
  """Largest ``|a - b| / max(|b|, 1e-12)`` over the numbers both report."""
  fa, fb = dict(_flat(a)), dict(_flat(b))
  diffs = [abs(fa[k] - fb[k]) / max(abs(fb[k]), 1e-12) for k in fa
           if k in fb and isinstance(fa[k], float) and
           isinstance(fb[k], float) and fa[k] == fa[k] and fb[k] == fb[k]]
  return max(diffs) if diffs else None


def table(rows) -> str:
  head = ("| program | wn wall s | NT wall s | wall NT/wn | wn CPU s | "
          "NT CPU s | CPU NT/wn | wn phases s | NT phases s | max rel diff "
          "of numbers | load |")
  lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
  for program, wn, nt in rows:
    def g(r, k):
      return None if "error" in r else r.get(k)

    def phases(r):
      if "error" in r:
        return r["error"][:80]
      return ", ".join(f"{k} {v:.1f}" for k, v in r["times"].items())

    ratio = lambda k: (f"{g(nt, k) / g(wn, k):.2f}x"
                       if g(nt, k) and g(wn, k) else "-")
    diff = (max_rel_diff(wn["numbers"], nt["numbers"])
            if "numbers" in wn and "numbers" in nt else None)
    loads = "-".join(str(r["load"]) for r in (wn, nt) if "load" in r)
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    lines.append(
        f"| {program} | {fmt(g(wn, 'wall_s'))} | {fmt(g(nt, 'wall_s'))} | "
        f"{ratio('wall_s')} | {fmt(g(wn, 'cpu_s'))} | {fmt(g(nt, 'cpu_s'))} "
        f"| {ratio('cpu_s')} | {phases(wn)} | {phases(nt)} | "
        f"{'-' if diff is None else f'{diff:.1e}'} | {loads} |")
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--peer", default=None,
                 help="python of the neural-tangents 0.6.5 venv")
  p.add_argument("--only", action="append", default=None,
                 choices=PROGRAMS)
  p.add_argument("--timeout", type=float, default=1800)
  p.add_argument("--markdown", default=None)
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  rows = []
  for program in args.only or PROGRAMS:
    wn = run(sys.executable, program, "widenets", args.timeout)
    nt = (run(args.peer, program, "neural_tangents", args.timeout)
          if args.peer else {"error": "no --peer"})
    for lib, r in (("widenets", wn), ("neural_tangents", nt)):
      msg = r.get("error") or (f"wall {r['wall_s']:.1f}s cpu {r['cpu_s']:.1f}s"
                               f" load {r['load']}")
      print(f"{program:16s} {lib:16s} {msg}", flush=True)
    rows.append((program, wn, nt))
  md = table(rows)
  print()
  print(md)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(md + "\n")
  if args.json:
    with open(args.json, "w") as f:
      json.dump([{"program": p, "widenets": a, "neural_tangents": b}
                 for p, a, b in rows], f, indent=1)


if __name__ == "__main__":
  main()
