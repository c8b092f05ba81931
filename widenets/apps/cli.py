"""The ``widenets`` command: ``demo``, ``kernel`` and ``evaluate``.

Every subcommand has ``--help``. Errors in what the user gave (an unknown
layer in a spec, a missing data file, inputs and labels of different lengths)
print one line ``widenets <command>: error: ...`` on stderr and exit with
status 2; set ``WIDENETS_TRACEBACK=1`` to see the full traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

import numpy as np

__all__ = ["main", "build_parser", "load_array", "load_architecture"]


class CLIError(Exception):
  """A user error with a one-line message."""


# --------------------------------------------------------------------- data
def load_array(path: str, key: Optional[str] = None) -> np.ndarray:
  """An array from ``.npy``, ``.npz`` (``key``, or its only array, or
  ``'x'``) or ``.csv``/``.txt`` (numeric, an optional header row)."""
  if not os.path.isfile(path):
    raise CLIError(f"data file {path!r} not found.")
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == ".npy":
      return np.load(path, allow_pickle=False)
    if ext == ".npz":
      with np.load(path, allow_pickle=False) as z:
        names = list(z.files)
        if key is None:
          key = names[0] if len(names) == 1 else ("x" if "x" in names
                                                   else None)
        if key not in names:
          raise CLIError(f"{path!r} holds arrays {names}; choose one with "
                         f"--key.")
        return z[key]
    if ext in (".csv", ".txt", ".tsv"):
      delim = {".csv": ",", ".tsv": "\t"}.get(ext)
      with open(path) as f:
        first = f.readline()
      try:
        [float(v) for v in first.replace(",", " ").split()]
        skip = 0
      except ValueError:
        skip = 1  # a header row
      if not first.strip():
        raise CLIError(f"{path!r} has no samples (the file is empty).")
      with warnings.catch_warnings():  # no rows: our error below
        warnings.simplefilter("ignore", UserWarning)
        x = np.loadtxt(path, delimiter=delim, skiprows=skip, ndmin=2,
                       dtype=np.float32)
      if x.size == 0:
        raise CLIError(f"{path!r} has no samples (only a header row).")
      return x
  except CLIError:
    raise
  except (ValueError, OSError) as e:
    raise CLIError(f"cannot read {path!r}: {_one_line(e)}") from None
  raise CLIError(f"unsupported data file {path!r}: use .npy, .npz or .csv.")


def _reshape(x: np.ndarray, shape: Optional[str], name: str) -> np.ndarray:
  if not shape:
    return x
  try:
    dims = tuple(int(d) for d in shape.split(","))
  except ValueError:
    raise CLIError(f"--shape must be comma-separated integers like 8,8,1; "
                   f"got {shape!r}.") from None
  if any(d <= 0 for d in dims):
    raise CLIError(f"--shape dimensions must be positive integers like "
                   f"8,8,1; got {shape!r}.")
  if int(np.prod(dims)) != int(np.prod(x.shape[1:])):
    raise CLIError(f"{name} has {int(np.prod(x.shape[1:]))} features per "
                   f"sample (shape {x.shape}); --shape {shape} needs "
                   f"{int(np.prod(dims))}.")
  return x.reshape((x.shape[0],) + dims)


# ------------------------------------------------------------ architecture
def load_architecture(arch: str, name: Optional[str] = None):
  """A stax triple from a spec string or a ``.py`` file.

  The file must define ``network`` (a triple, or a function returning one),
  or ``init_fn``/``apply_fn``/``kernel_fn``; ``name`` picks another attribute.
  """
  from .. import spec
  if arch.endswith(".py"):
    if not os.path.isfile(arch):
      raise CLIError(f"architecture file {arch!r} not found.")
    import importlib.util
    mod_spec = importlib.util.spec_from_file_location("widenets_user_arch",
                                                      arch)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)  # the user's own file
    if name is None and not hasattr(module, "network") and hasattr(
        module, "kernel_fn"):
      return (getattr(module, "init_fn", None),
              getattr(module, "apply_fn", None), module.kernel_fn)
    attr = name or "network"
    if not hasattr(module, attr):
      raise CLIError(f"{arch!r} defines no {attr!r} (a stax triple or a "
                     f"function returning one) and no kernel_fn.")
    net = getattr(module, attr)
    if callable(net) and not isinstance(net, tuple):
      net = net()
    if not (isinstance(net, tuple) and len(net) == 3):
      raise CLIError(f"{arch}:{attr} is not an (init_fn, apply_fn, "
                     f"kernel_fn) triple.")
    return net
  try:
    return spec.parse(arch)
  except spec.SpecError as e:
    raise CLIError(str(e)) from None


# ----------------------------------------------------------------- kernel
def _kernel(args) -> int:
  import jax
  if args.x64:
    jax.config.update("jax_enable_x64", True)
  gets = tuple(g.strip() for g in args.get.split(",") if g.strip())
  bad = [g for g in gets if g not in ("nngp", "ntk")]
  if bad or not gets:
    raise CLIError(f"--get must be nngp, ntk or nngp,ntk; got {args.get!r}.")
  x1 = _reshape(load_array(args.x1, args.key), args.shape, "x1")
  x2 = None if args.x2 is None else _reshape(load_array(args.x2, args.key),
                                             args.shape, "x2")
  if x2 is not None and x1.shape[1:] != x2.shape[1:]:
    raise CLIError(f"x1 and x2 samples differ in shape: {x1.shape[1:]} vs "
                   f"{x2.shape[1:]}.")
  kernel_fn = load_architecture(args.arch, args.name)[2]
  out = args.out
  use_store = out.endswith(".zarr") or os.path.isdir(out)
  if not use_store and not out.endswith((".npy", ".npz")):
    raise CLIError(f"--out must end in .npy, .npz or .zarr; got {out!r}.")
  progress = (_progress_line if args.progress else False)
  try:
    from ..batching import batch
  except ImportError:  # pragma: no cover - batching is part of the package
    batch = None
  if use_store and batch is None:
    raise CLIError("zarr stores need widenets.batching.")
  if batch is not None:
    kfn = batch(kernel_fn, args.batch_size,
                store=out if use_store else None, progress=progress)
  else:  # pragma: no cover
    kfn = kernel_fn
  k = kfn(x1, x2, gets)
  if progress:
    print(file=sys.stderr)
  stats = getattr(kfn, "last_run", None)
  if use_store and stats is not None:
    print(f"blocks: {stats.computed} computed, {stats.skipped} already in "
          f"the store")
  arrays = {g: np.asarray(getattr(k, g)) for g in gets}
  if use_store:
    written = out
  elif out.endswith(".npz"):
    np.savez(out, **arrays)
    written = out
  elif out.endswith(".npy"):
    if len(gets) == 1:
      np.save(out, arrays[gets[0]])
      written = out
    else:
      stem = out[:-4]
      for g, a in arrays.items():
        np.save(f"{stem}_{g}.npy", a)
      written = ", ".join(f"{stem}_{g}.npy" for g in gets)
  else:
    raise CLIError(f"--out must end in .npy, .npz or .zarr; got {out!r}.")
  shapes = ", ".join(f"{g} {a.shape}" for g, a in arrays.items())
  print(f"wrote {shapes} to {written}")
  return 0


def _progress_line(done: int, total: int) -> None:
  print(f"\rkernel blocks {done}/{total}", end="", file=sys.stderr, flush=True)


# --------------------------------------------------------------- evaluate
def _evaluate(args) -> int:
  from . import evaluate as ev
  try:
    times = [float(t) for t in args.times.split(",")]
  except ValueError:
    raise CLIError(f"--times must be comma-separated numbers or inf; got "
                   f"{args.times!r}.") from None
  kernels = tuple(k.strip() for k in args.kernels.split(","))
  if any(k not in ("nngp", "ntk") for k in kernels):
    raise CLIError(f"--kernels must be nngp, ntk or nngp,ntk; got "
                   f"{args.kernels!r}.")
  archs = dict(ev.DEFAULT_ARCHITECTURES)
  if args.arch:
    archs = {}
    for item in args.arch:
      name, sep, spec = item.partition("=")
      if not sep or not name.strip() or not spec.strip():
        raise CLIError(f"--arch must be NAME=SPEC; got {item!r}.")
      archs[name.strip()] = spec.strip()
  if args.only:
    wanted = [a.strip() for a in args.only.split(",")]
    missing = [a for a in wanted if a not in archs]
    if missing:
      raise CLIError(f"--only: unknown architecture(s) {missing}; have "
                     f"{list(archs)}.")
    archs = {a: archs[a] for a in wanted}
  for name, spec in archs.items():  # validate every spec before any compute
    load_architecture(spec)
  if args.x is not None or args.y is not None:
    if args.x is None or args.y is None:
      raise CLIError("--x and --y go together.")
    x = _reshape(load_array(args.x, args.key), args.shape, "x")
    y = load_array(args.y).reshape(-1)
    if len(x) != len(y):
      raise CLIError(f"--x has {len(x)} samples but --y has {len(y)} labels.")
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0:
      raise CLIError("--y must hold non-negative integer class labels.")
    n = args.train + args.test
    if n > len(x):
      raise CLIError(f"--train {args.train} + --test {args.test} exceeds the "
                     f"{len(x)} samples.")
    perm = np.random.default_rng(args.seed).permutation(len(x))
    tr, te = perm[:args.train], perm[args.train:n]
    data = (x[tr].astype(np.float32), y[tr].astype(int),
            x[te].astype(np.float32), y[te].astype(int))
    source = f"{args.x} ({args.train} train / {args.test} test)"
  else:
    try:
      data = ev.load_digits(args.train, args.test, args.seed)
    except ValueError as e:
      raise CLIError(str(e)) from None
    source = (f"scikit-learn digits, 8x8x1, {args.train} train / "
              f"{args.test} test (seed {args.seed})")
  print(f"data: {source}", flush=True)
  rows = ev.evaluate(archs, data, times, kernels, args.diag_reg,
                     args.batch_size, log=lambda s: print(s, flush=True))
  note = (f"Test accuracy (%) of kernel regression on centered one-hot "
          f"targets; data: {source}; diag_reg={args.diag_reg:g}; t in "
          f"`predict` time units (learning rate 1). Architectures:\n\n" +
          "\n".join(f"- {name}: `{spec}`" for name, spec in archs.items()))
  table = ev.to_markdown(rows, note=note)
  print()
  print(table)
  if args.out:
    with open(args.out, "w") as f:
      f.write(table)
    print(f"wrote {args.out}")
  return 0


# ------------------------------------------------------------------- demo
def _demo(args) -> int:
  from . import demo
  demo.run_args(args)
  return 0


# ----------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
  from .. import __version__
  p = argparse.ArgumentParser(
      prog="widenets",
      description="Infinitely wide neural networks: kernels, predictions and "
                  "checks on your laptop.")
  p.add_argument("--version", action="version",
                 version=f"widenets {__version__}")
  sub = p.add_subparsers(dest="command", metavar="COMMAND")

  d = sub.add_parser("demo", help="the seed example: NTK ensemble vs finite "
                     "networks trained by gradient descent",
                     description="Infinite-width NTK ensemble (mean +- 2 "
                     "sigma at several times) vs ~100 finite networks trained "
                     "by gradient descent on a noisy sine; prints the "
                     "agreement and writes a PNG.")
  from . import demo
  demo.build_parser(d)
  d.set_defaults(func=_demo)

  k = sub.add_parser("kernel", help="compute NNGP/NTK kernels of an "
                     "architecture on data files",
                     description="Compute the infinite-width NNGP/NTK of an "
                     "architecture between inputs, in blocks, into .npy/.npz "
                     "or a resumable zarr store.")
  k.add_argument("arch", help='a spec such as "Conv(64,(3,3),SAME) Relu '
                 'GlobalAvgPool Dense(10)", or a .py file defining '
                 '`network` (a stax triple) or `kernel_fn` (widenets runs it '
                 'as Python: only pass files you trust)')
  k.add_argument("x1", help="inputs: .npy, .npz or .csv (samples first)")
  k.add_argument("--x2", help="second inputs (default: x1, at half cost)")
  k.add_argument("--key", help="array name inside .npz files")
  k.add_argument("--name", help="attribute of the .py file to use")
  k.add_argument("--shape", help="per-sample shape, e.g. 8,8,1 for "
                 "flattened images (NHWC)")
  k.add_argument("--get", default="nngp,ntk", help="nngp, ntk or nngp,ntk "
                 "(default)")
  k.add_argument("--out", default="kernel.npz",
                 help="output: .npz (default kernel.npz), .npy (one file per "
                 "kernel) or a .zarr directory (resumable: rerun to finish)")
  k.add_argument("--batch-size", type=int, default=0,
                 help="samples per block (0: one block)")
  k.add_argument("--no-progress", dest="progress", action="store_false",
                 help="do not print block progress")
  k.add_argument("--x64", action="store_true", help="compute in float64")
  k.set_defaults(func=_kernel)

  e = sub.add_parser("evaluate", help="kernel-regression accuracy of FC, CNN "
                     "and CNN-GAP kernels on digits",
                     description="Test accuracy of NNGP/NTK kernel regression "
                     "(t=inf and finite gradient-flow times) on scikit-learn's "
                     "built-in digits (or --x/--y), as a markdown table.")
  e.add_argument("--train", type=int, default=300,
                 help="training samples (default 300)")
  e.add_argument("--test", type=int, default=200,
                 help="test samples (default 200)")
  e.add_argument("--seed", type=int, default=0, help="subsampling seed")
  e.add_argument("--times", default="100,1000,10000,inf",
                 help="gradient-flow times (default 100,1000,10000,inf)")
  e.add_argument("--kernels", default="nngp,ntk", help="nngp,ntk (default)")
  e.add_argument("--arch", action="append", metavar="NAME=SPEC",
                 help="an architecture to score: a spec string, or a .py "
                 "file defining `network` (widenets runs it as Python: only "
                 "pass files you trust). Repeatable; replaces the default "
                 "FC, CNN, CNN-GAP")
  e.add_argument("--only", help="comma-separated subset of the "
                 "architectures, e.g. FC,CNN-GAP")
  e.add_argument("--x", help="your inputs (.npy/.npz/.csv) instead of digits")
  e.add_argument("--y", help="your integer labels, same length as --x")
  e.add_argument("--key", help="array name inside .npz files")
  e.add_argument("--shape", help="per-sample shape for --x, e.g. 8,8,1")
  e.add_argument("--diag-reg", type=float, default=1e-4,
                 help="relative diagonal regularizer (default 1e-4)")
  e.add_argument("--batch-size", type=int, default=50,
                 help="kernel block size (default 50)")
  e.add_argument("--out", default="results.md",
                 help="markdown file to write (default results.md; '' for "
                 "none)")
  e.set_defaults(func=_evaluate)
  return p


def _one_line(e: BaseException) -> str:
  msg = " ".join(str(e).split())
  return msg or type(e).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if getattr(args, "func", None) is None:
    parser.print_help()
    return 2
  try:
    return args.func(args)
  except KeyboardInterrupt:
    print(f"widenets {args.command}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # one clear line, never a traceback
    if os.environ.get("WIDENETS_TRACEBACK"):
      raise
    kind = "" if isinstance(e, (CLIError, ValueError, OSError)) else \
        f"{type(e).__name__}: "
    print(f"widenets {args.command}: error: {kind}{_one_line(e)}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
