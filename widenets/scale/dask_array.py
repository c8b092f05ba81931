"""Kernels as lazy Dask arrays: one chunk per kernel block.

``kernel_array(kernel_fn, x1, x2=None, get='ntk', chunks=...)`` builds a Dask
graph with one task per computed block (the same blocks as
`widenets.batching.batch`: padded to a common shape so they compile once, and
for ``x2=None`` only ``i <= j``, lower chunks being transposes of upper ones).
It runs on any Dask scheduler: threads (``.compute()``), or a
``dask.distributed`` cluster (a ``LocalCluster``, dask-jobqueue on SLURM,
dask-kubernetes...), which also retries blocks lost with a worker.
``.to_zarr(path)`` persists the kernel chunk by chunk.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import uuid
from typing import Union

import jax
import numpy as np

from ..batching import assemble, blocks
from ..batching.job import BlockJob
from ..batching.plan import leaf_specs, validated_inputs
from ..batching.runner import BatchedKernelFn
from ..kernel import same_inputs

__all__ = ["kernel_array"]

# Jobs by token, per process: tasks unpickled on a worker share one job and
# hence one compiled block function (no recompilation per task).
_JOBS: dict = {}
_LOCK = threading.Lock()


class _Task:
  """A picklable job handle that resolves to one shared `BlockJob`."""

  def __init__(self, job: BlockJob):
    # The same job content gives the same token, so a worker reuses the
    # functions it compiled for an earlier graph of the same kernel.
    try:
      import cloudpickle
      self.token = hashlib.sha256(cloudpickle.dumps(job)).hexdigest()
    except Exception:  # noqa: BLE001 - unpicklable: only local schedulers
      self.token = uuid.uuid4().hex
    self.job = job

  def resolve(self) -> BlockJob:
    with _LOCK:
      return _JOBS.setdefault(self.token, self.job)


def _block(task: _Task, x2_is_none: bool, xb1, xb2, p1, p2, keys,
           specs: tuple, grid: blocks.Grid, ij: tuple):
  """Block ``ij`` as ``{path: trimmed numpy leaf}`` (only the leaves this
  block provides, see `assemble.trim`, so little travels between workers)."""
  job = task.resolve()
  dyn_args, dyn_kwargs = job.dynamic()
  out = job.fn(x2_is_none)(xb1, xb2, dyn_args, dyn_kwargs, p1, p2, keys)
  vals = {p: v for p, v, _ in blocks.flatten_output(out)[1]}
  res = {}
  for spec in specs:
    v = vals.get(spec.path)
    v = None if v is None else assemble.trim(spec, v, grid, *ij)
    if v is not None:
      res[spec.path] = np.asarray(v)
  return res


def _pick(res: dict, key: str):
  return res[key]


def _pick_mirror(res: dict, key: str, rule: str):
  return np.ascontiguousarray(blocks.mirror(res[key], rule))


def kernel_array(kernel_fn, x1, x2=None, get="ntk", chunks: Union[int, str,
                 None] = None, *args, **kwargs):
  """A kernel as lazy Dask arrays whose chunks are kernel blocks.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get, *args, **kwargs)`` (analytic,
      empirical with ``params`` in ``args``, or Monte Carlo).
    x1: ``(N1, ...)`` inputs (array or pytree of arrays, sample axis first).
    x2: ``(N2, ...)`` inputs or ``None`` (``x2 = x1``: only chunks ``i <= j``
      are computed, chunk ``(j, i)`` is the transpose of ``(i, j)``).
    get: what ``kernel_fn`` returns (``'ntk'``, ``'nngp'``, a tuple of names
      or ``None``); passed as its third argument.
    chunks: block size (samples per chunk side); ``None`` or ``'auto'``
      choose it from free memory as ``batch(batch_size='auto')`` does.
    *args, **kwargs: further arguments of ``kernel_fn`` (see
      `widenets.batching.job`).

  Returns:
    A ``dask.array.Array`` of shape ``(N1, N2) + S`` for a single ``get``;
    otherwise the structure ``kernel_fn`` returns (namedtuple, `Kernel`) with
    Dask arrays as leaves.
  """
  import dask.array as da
  from dask.highlevelgraph import HighLevelGraph

  job = BlockJob(kernel_fn, (get,) + tuple(args), kwargs)
  symmetric = x2 is None
  x1, x2 = validated_inputs(x1, x2)
  n1 = jax.tree_util.tree_leaves(x1)[0].shape[0]
  n2 = n1 if symmetric else jax.tree_util.tree_leaves(x2)[0].shape[0]
  if chunks is None or chunks == "auto":
    helper = BatchedKernelFn(kernel_fn, "auto", 0, False, None, False)
    b = helper._auto_size(job, x1, x2, max(n1, n2), jax.devices()[0])
  else:
    if not isinstance(chunks, (int, np.integer)) or chunks <= 0:
      raise ValueError(f"kernel_array: chunks must be a positive integer or "
                       f"'auto'; got {chunks!r}.")
    b = int(chunks)
  b1, b2 = (min(b, n1),) * 2 if symmetric else (min(b, n1), min(b, n2))
  grid = blocks.Grid(n1, n2, b1, b2, symmetric)
  x1p = jax.tree_util.tree_map(lambda a: blocks.pad_rows(a, grid.padded1), x1)
  x2p = x1p if symmetric else jax.tree_util.tree_map(
      lambda a: blocks.pad_rows(a, grid.padded2), x2)
  pair1, pair2 = job.padded_pairs(grid)
  keys1, keys2 = job.row_keys(grid)
  take = lambda t, s: jax.tree_util.tree_map(lambda a: np.asarray(a[s]), t)

  dyn_args, dyn_kwargs = job.dynamic()
  shape_out = job.structure(
      symmetric, take(x1p, slice(0, b1)),
      None if symmetric else take(x2p, slice(0, b2)), dyn_args, dyn_kwargs,
      take(pair1, slice(0, b1)), take(pair2, slice(0, b2)),
      None if keys1 is None else (keys1[0], keys2[0]))
  desc, leaves = blocks.flatten_output(shape_out)
  specs = leaf_specs(job, leaves, grid, x1p, pair1,
                      None if keys1 is None else (keys1[0], keys2[0]))
  mirrored = symmetric and all(s.mirror is not None for s in specs
                               if s.kind == blocks.PAIR)

  token = uuid.uuid4().hex[:12]
  task = _Task(job)
  blk = f"kernel-block-{token}"
  graph = {}
  # Inputs: one key per row/column block, so each reaches a worker once.
  for i in range(grid.nb1):
    s = slice(i * b1, (i + 1) * b1)
    graph[(f"x1-{token}", i)] = take(x1p, s)
    graph[(f"p1-{token}", i)] = take(pair1, s)
  for j in range(grid.nb2):
    s = slice(j * b2, (j + 1) * b2)
    graph[(f"x2-{token}", j)] = take(x2p, s)
    graph[(f"p2-{token}", j)] = take(pair2, s)
  for i, j in grid.tasks(mirrored):
    diag = symmetric and i == j
    keys = None if keys1 is None else (np.asarray(keys1[i]),
                                       np.asarray(keys2[j]))
    graph[(blk, i, j)] = (
        _block, task, diag, (f"x1-{token}", i),
        None if diag else (f"x2-{token}", j), (f"p1-{token}", i),
        (f"p2-{token}", j), keys, tuple(specs), grid, (i, j))

  def chunk_sizes(n, bsz):
    return tuple(min(bsz, n - s) for s in range(0, n, bsz))

  rows, cols = chunk_sizes(n1, b1), chunk_sizes(n2, b2)
  values = {}
  for k, spec in enumerate(specs):
    name = f"kernel-leaf{k}-{token}"
    layer = {}
    extra = tuple(spec.block_shape[2:] if spec.kind == blocks.PAIR
                  else spec.block_shape[1:])
    zeros = (0,) * len(extra)
    if spec.kind == blocks.PAIR:
      for i, j in itertools.product(range(grid.nb1), range(grid.nb2)):
        if mirrored and j < i:
          layer[(name, i, j) + zeros] = (_pick_mirror, (blk, j, i), spec.path,
                                         spec.mirror)
        else:
          layer[(name, i, j) + zeros] = (_pick, (blk, i, j), spec.path)
      ch = (rows, cols) + tuple((e,) for e in extra)
    elif spec.kind == blocks.ROW:
      for i in range(grid.nb1):
        layer[(name, i) + zeros] = (
            _pick, (blk, i, assemble.row_source(grid, i)), spec.path)
      ch = (rows,) + tuple((e,) for e in extra)
    elif spec.kind == blocks.COL and not symmetric:
      for j in range(grid.nb2):
        layer[(name, j) + zeros] = (_pick, (blk, 0, j), spec.path)
      ch = (cols,) + tuple((e,) for e in extra)
    elif spec.kind == blocks.CONST:
      shape = tuple(spec.block_shape)
      layer[(name,) + (0,) * len(shape)] = (_pick, (blk, 0, 0), spec.path)
      ch = tuple((e,) for e in shape)
    elif spec.kind == blocks.FLAG:
      values[k] = np.asarray(same_inputs(x1, x2), spec.dtype)
      continue
    elif spec.kind in (blocks.ROWROW, blocks.COLCOL) and spec.source:
      continue
    else:
      continue
    hlg = HighLevelGraph.from_collections(name, {**graph, **layer})
    values[k] = da.Array(hlg, name, ch, dtype=np.dtype(spec.dtype))
  for k, spec in enumerate(specs):
    if spec.kind in (blocks.ROWROW, blocks.COLCOL) and spec.source:
      if spec.source.startswith("leaf:"):
        values[k] = values[int(spec.source[5:])]
      else:
        sub_x = x1 if spec.kind == blocks.ROWROW else x2
        values[k] = kernel_array(kernel_fn, sub_x, None, "nngp", b, *args,
                                 **kwargs)
  return assemble.build_output(desc, specs, grid, values)
