"""`batch`: compute any kernel function block by block.

See `widenets.batching` for the user-facing description.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ..kernel import Kernel, same_inputs
from . import assemble, blocks as B, devices as D, progress as P
from .job import BlockJob, fingerprint
from .store import FORMAT, BlockStore, check_path

__all__ = ["batch", "BatchedKernelFn", "RunStats"]


@dataclasses.dataclass
class RunStats:
  """What the last call of a batched kernel function did.

  Attributes:
    grid: the block grid (sizes ``b1 x b2``, counts, symmetry).
    mirrored: whether lower blocks were mirrored from upper ones.
    computed: blocks computed by this call (a mirrored pair counts once).
    skipped: blocks found finished in the store.
    devices: number of devices used.
    seconds: wall time of the call.
    computed_blocks: the ``(i, j)`` blocks computed, in order.
    per_device: blocks dispatched to each device id.
  """
  grid: Optional[B.Grid] = None
  mirrored: bool = False
  computed: int = 0
  skipped: int = 0
  devices: int = 1
  seconds: float = 0.0
  computed_blocks: list = dataclasses.field(default_factory=list)
  per_device: dict = dataclasses.field(default_factory=dict)


# batch_size='auto' for kernel functions that cannot be traced (their memory
# cannot be analysed ahead of time).
_UNTRACEABLE_AUTO = 256


def _check_batch_size(batch_size) -> None:
  if isinstance(batch_size, str) and batch_size == "auto":
    return
  if (isinstance(batch_size, bool) or
      not isinstance(batch_size, (int, np.integer)) or batch_size < 0):
    raise ValueError(f"batch: batch_size must be a non-negative integer (0: "
                     f"no serial batching) or 'auto'; got {batch_size!r}.")


def batch(kernel_fn: Callable, batch_size: Union[int, str] = 0,
          device_count: int = -1, store_on_device: bool = True, *,
          store: Optional[Union[str, os.PathLike]] = None,
          progress: Union[bool, Callable[[int, int], None]] = False
          ) -> "BatchedKernelFn":
  """Returns ``kernel_fn`` computed in blocks, over devices, optionally stored.

  Compatible with ``neural_tangents.batch`` (same arguments and defaults),
  for analytic (``stax``), empirical and Monte Carlo kernel functions and any
  output (`Kernel`, namedtuple, array or pytree), without its limits:

  * any ``batch_size``: the last block is padded (with repeated samples) and
    trimmed, so ``N`` need not be divisible by it;
  * ``x2=None`` computes only blocks ``i <= j`` and mirrors the rest;
  * ``diagonal_batch=False`` kernels (full ``cov1``/``cov2``) work;
  * devices: blocks are spread over ``device_count`` devices;
  * ``batch_size='auto'`` picks the largest block that fits in half of the
    free device memory, from XLA's memory analysis of the compiled block.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, *args, **kwargs)`` (or
      ``kernel_fn(kernel)``); ``x1``/``x2`` are arrays (or pytrees of arrays)
      with the sample axis first. See `widenets.batching.job` for how
      ``args``/``kwargs`` are passed to each block.
    batch_size: samples per block side (per device); ``0`` means one block per
      device (no serial batching); ``'auto'`` chooses from free memory.
    device_count: ``-1`` all local devices, ``0`` the default device only,
      ``k`` the first ``k`` devices.
    store_on_device: keep the result on the (first) device; ``False`` collects
      blocks into host numpy arrays as they finish (larger kernels fit).
    store: a directory: write blocks into a zarr store as they finish, with the
      inputs' fingerprint and the network's description. Calling again with
      the same store computes only the missing blocks (after a crash, say); a
      store of other inputs or another network is refused. Read it back with
      `widenets.batching.open_store`.
    progress: ``True`` for a tqdm bar (blocks done, ETA), or a callable
      ``progress(done, total)`` called after each block.

  Returns:
    A function with the signature of ``kernel_fn`` returning the same values
    (to float round-off); its ``last_run`` attribute holds a `RunStats`.
  """
  _check_batch_size(batch_size)
  D.select_devices(device_count)  # validates early
  if store is not None:
    store = check_path(store)
  return BatchedKernelFn(kernel_fn, batch_size, device_count, store_on_device,
                         store, progress)


class BatchedKernelFn:
  """The function `batch` returns (callable like the wrapped ``kernel_fn``)."""

  def __init__(self, kernel_fn, batch_size, device_count, store_on_device,
               store, progress):
    self.kernel_fn = kernel_fn
    self.batch_size = batch_size
    self.device_count = device_count
    self.store_on_device = store_on_device
    self.store = store
    self.progress = progress
    self.last_run = RunStats()
    self.__wrapped__ = kernel_fn
    self.__name__ = getattr(kernel_fn, "__name__", "kernel_fn")
    self.__doc__ = getattr(kernel_fn, "__doc__", None)
    if hasattr(kernel_fn, "reqs"):
      self.reqs = kernel_fn.reqs

  def __repr__(self) -> str:
    return f"<batched {getattr(self.kernel_fn, '__name__', self.kernel_fn)!r}>"

  def __call__(self, x1_or_kernel, x2=None, *args, **kwargs):
    from ..stax.inputs import is_kernel_tree
    job = BlockJob(self.kernel_fn, args, kwargs)
    start = time.perf_counter()
    if is_kernel_tree(x1_or_kernel):
      if x2 is not None:
        raise ValueError("batch: pass either a Kernel or inputs (x1, x2), "
                         "not a Kernel and x2.")
      out = self._run_kernel(job, x1_or_kernel)
    else:
      out = self._run(job, x1_or_kernel, x2, self.store, self.progress)
    self.last_run.seconds = time.perf_counter() - start
    return out

  # -- inputs ------------------------------------------------------------------
  def _block_sizes(self, job, x1, x2, n1, n2, devices, old_meta):
    bs = self.batch_size
    symmetric = x2 is None
    if old_meta is not None and bs == "auto":
      g = old_meta["grid"]
      return g["b1"], g["b2"]
    if bs == "auto":
      try:
        b = self._auto_size(job, x1, x2, max(n1, n2), devices[0])
      except Exception:  # noqa: BLE001 - kernel_fn cannot be traced
        b = _UNTRACEABLE_AUTO
      return min(b, n1), min(b, n2)
    if bs == 0:
      if len(devices) == 1:
        return n1, n2
      per = -(-n1 // len(devices))
      return (per, per) if symmetric else (per, n2)
    return min(bs, n1), min(bs, n2)

  def _auto_size(self, job, x1, x2, n_max, device) -> int:
    x2 = x1 if x2 is None else x2
    dyn_args, dyn_kwargs = job.dynamic()
    fn = job.fn(False)

    def spec(tree, b):
      return jax.tree_util.tree_map(
          lambda a: jax.ShapeDtypeStruct((b,) + tuple(a.shape[1:]),
                                         np.asarray(a).dtype), tree)

    def block_bytes(b):
      p1 = {k: spec(v1, b) for k, (v1, _) in job.pair_kwargs.items()}
      p2 = {k: spec(v1 if v2 is None else v2, b)
            for k, (v1, v2) in job.pair_kwargs.items()}
      keys = None if job.rng is None else (job.rng, job.rng)
      args = (spec(x1, b), spec(x2, b), dyn_args, dyn_kwargs, p1, p2, keys)
      m = D._compiled_bytes(fn, *args)
      if m is None:  # no memory analysis: outputs plus generous temporaries
        m = 4 * D._output_bytes(jax.eval_shape(fn, *args))
      return m

    out = jax.eval_shape(fn, spec(x1, 2), spec(x2, 2), dyn_args, dyn_kwargs,
                         {k: spec(v1, 2) for k, (v1, _) in
                          job.pair_kwargs.items()},
                         {k: spec(v1 if v2 is None else v2, 2)
                          for k, (v1, v2) in job.pair_kwargs.items()},
                         None if job.rng is None else (job.rng, job.rng))
    per_pair = 0.0
    if self.store_on_device and self.store is None:
      per_pair = D._output_bytes(out) / 4
    return D.auto_batch_size(block_bytes, n_max, D.free_memory(device),
                             result_bytes_per_pair=per_pair)

  def _run(self, job: BlockJob, x1, x2, store_path, progress):
    symmetric = x2 is None
    x1, x2 = _validated(x1, x2)
    n1 = _n(x1)
    n2 = n1 if symmetric else _n(x2)
    devices = D.select_devices(self.device_count)
    old = BlockStore.existing_meta(store_path) if store_path else None
    b1, b2 = self._block_sizes(job, x1, x2, n1, n2, devices, old)
    if symmetric:
      b1 = b2 = max(b1, b2)
    grid = B.Grid(n1, n2, b1, b2, symmetric)
    x1p = jax.tree_util.tree_map(lambda a: B.pad_rows(a, grid.padded1), x1)
    x2p = x1p if symmetric else jax.tree_util.tree_map(
        lambda a: B.pad_rows(a, grid.padded2), x2)
    pair1, pair2 = job.padded_pairs(grid)
    keys1, keys2 = job.row_keys(grid)

    def inputs(i, j):
      r = slice(i * b1, (i + 1) * b1)
      c = slice(j * b2, (j + 1) * b2)
      take = lambda t, s: jax.tree_util.tree_map(lambda a: a[s], t)
      keys = None if keys1 is None else (keys1[i], keys2[j])
      xb2 = None if symmetric and i == j else take(x2p, c)
      return (take(x1p, r), xb2, take(pair1, r), take(pair2, c), keys)

    # Output structure from one block, without computing it.
    xb1, _, p1, p2, keys = inputs(0, 0)
    dyn_args, dyn_kwargs = job.dynamic()
    shape_out = job.structure(
        symmetric, xb1, None if symmetric else inputs(0, 0)[1],
        dyn_args, dyn_kwargs, p1, p2, keys)
    desc, leaves = B.flatten_output(shape_out)
    specs = _leaf_specs(job, leaves, grid, x1p, pair1, keys)
    mirrored = symmetric and all(
        s.mirror is not None for s in specs if s.kind == B.PAIR)

    stats = RunStats(grid=grid, mirrored=mirrored, devices=len(devices))
    self.last_run = stats
    store = None
    if store_path is not None:
      meta = dict(format=FORMAT, fingerprint=fingerprint(
          x1, x2, job.arrays_fingerprint()), architecture=job.description(),
          grid=grid.asdict(), structure=desc,
          leaves=[dataclasses.asdict(s) for s in specs], complete=False)
      store = BlockStore.open(store_path, meta)
      done = store.done_mask()
    else:
      done = np.zeros((grid.nb1, grid.nb2), bool)
    all_tasks = list(grid.tasks(mirrored))
    tasks = [t for t in all_tasks if not done[t]]
    stats.skipped = len(all_tasks) - len(tasks)

    device0 = devices[0]
    sink = (assemble.StoreSink(store) if store is not None else
            assemble.MemorySink(specs, grid, self.store_on_device,
                                device0 if len(devices) > 1 else None))
    bar = P.make_progress(progress, len(all_tasks), stats.skipped)
    dyn = {d: D.put((dyn_args, dyn_kwargs), d) for d in devices}
    needs_host = store is not None or not self.store_on_device
    lag = 2 * len(devices) if (needs_host or progress) else 0
    pending = collections.deque()

    def retire():
      i, j, out = pending.popleft()
      if lag:
        out = jax.block_until_ready(out)
      vals = {p: v for p, v, _ in B.flatten_output(out)[1]}
      sink.put(i, j, vals, mirrored and i != j)
      stats.computed += 1
      stats.computed_blocks.append((i, j))
      bar.update(1)

    try:
      for t, (i, j) in enumerate(tasks):
        dev = devices[t % len(devices)]
        stats.per_device[dev.id] = stats.per_device.get(dev.id, 0) + 1
        xb1, xb2, p1, p2, keys = D.put(inputs(i, j), dev)
        fn = job.fn(symmetric and i == j)
        out = fn(xb1, xb2, *dyn[dev], p1, p2, keys)
        pending.append((i, j, out))
        while len(pending) > lag:
          retire()
      while pending:
        retire()
    finally:
      bar.close()

    values = {}
    flag = same_inputs(x1, x2)
    for k, spec in enumerate(specs):
      if spec.kind == B.FLAG:
        values[k] = np.asarray(flag, spec.dtype)
        if store is not None:
          store.write_flag(k, values[k])
      elif spec.kind in (B.PAIR, B.ROW, B.COL, B.CONST):
        values[k] = sink.leaf(k)
    for k, spec in enumerate(specs):
      if spec.kind not in (B.ROWROW, B.COLCOL) or spec.source is None:
        continue
      if spec.source.startswith("leaf:"):
        values[k] = values[int(spec.source[5:])]
      else:
        sub_x = x1 if spec.kind == B.ROWROW else x2
        sub_store = (None if store_path is None else
                     os.path.join(store_path, spec.source))
        sub_job = job.self_job("nngp", first=spec.kind == B.ROWROW)
        values[k] = self._run(sub_job, sub_x, None, sub_store, False)
        self.last_run = stats
    if store is not None:
      store.set_complete()
    if store is not None or not self.store_on_device:
      values = {k: np.asarray(v) if v is not None else None
                for k, v in values.items()}
      if self.store_on_device:
        values = {k: None if v is None else jax.device_put(v, device0)
                  for k, v in values.items()}
    elif store is None:
      values = {k: None if v is None else jnp.asarray(v)
                for k, v in values.items()}
    return assemble.build_output(desc, specs, grid, values)

  # -- Kernel inputs (neural-tangents' kernel_fn(kernel) form) ----------------
  def _run_kernel(self, job: BlockJob, k):
    if self.store is not None:
      raise ValueError("batch: store= needs array inputs (x1, x2), not a "
                       "Kernel.")
    first = jax.tree_util.tree_leaves(
        k, is_leaf=lambda l: isinstance(l, Kernel))[0]
    n1, n2 = first.nngp.shape[:2]
    devices = D.select_devices(self.device_count)
    bs = self.batch_size
    if bs == "auto" or bs == 0:
      b1, b2 = n1, n2
    else:
      b1, b2 = min(bs, n1), min(bs, n2)
    grid = B.Grid(n1, n2, b1, b2, False)
    cov2_none = first.cov2 is None

    def block(i, j):
      return jax.tree_util.tree_map(
          lambda kk: kk.slice(grid.rows(i), grid.cols(j)), k,
          is_leaf=lambda l: isinstance(l, Kernel))

    dyn_args, dyn_kwargs = job.dynamic()
    fn = job.fn(True)
    outs = {}
    for t, (i, j) in enumerate(grid.tasks(False)):
      dev = devices[t % len(devices)]
      outs[(i, j)] = fn(D.put(block(i, j), dev), None,
                        *D.put((dyn_args, dyn_kwargs), dev), {}, {}, None)
    desc, leaves = B.flatten_output(outs[(0, 0)])
    specs = [dataclasses.replace(s, kind=B.CONST) if s.kind == B.FLAG else s
             for s in _leaf_specs(job, leaves, grid, None, None, None)]
    sink = assemble.MemorySink(specs, grid, self.store_on_device,
                               devices[0] if len(devices) > 1 else None)
    for (i, j), out in outs.items():
      sink.put(i, j, {p: v for p, v, _ in B.flatten_output(out)[1]}, False)
    values = {k: sink.leaf(k) for k, s in enumerate(specs)
              if s.kind in (B.PAIR, B.ROW, B.COL, B.CONST)}
    if cov2_none:
      values = {k: None if specs[k].field == "cov2" else v
                for k, v in values.items()}
    self.last_run = RunStats(grid=grid, computed=len(outs),
                             devices=len(devices))
    return assemble.build_output(desc, specs, grid, values)


# -- helpers ---------------------------------------------------------------------

def _validated(x1, x2):
  """Host numpy copies of the inputs, checked like ``kernel_fn`` would."""
  def host(tree, name):
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
      raise ValueError(f"batch: {name} has no arrays.")
    for a in leaves:
      if not hasattr(a, "shape") or np.ndim(a) < 1:
        raise ValueError(f"batch: {name} must be arrays with a leading "
                         f"sample axis; got {type(a).__name__} of shape "
                         f"{getattr(a, 'shape', ())}.")
    return jax.tree_util.tree_map(np.asarray, tree)

  x1 = host(x1, "x1")
  n1 = {a.shape[0] for a in jax.tree_util.tree_leaves(x1)}
  if len(n1) > 1:
    raise ValueError(f"batch: the arrays of x1 have different numbers of "
                     f"samples {sorted(n1)}.")
  if x2 is None:
    return x1, None
  x2 = host(x2, "x2")
  l1, t1 = jax.tree_util.tree_flatten(x1)
  l2, t2 = jax.tree_util.tree_flatten(x2)
  if t1 != t2:
    raise ValueError(f"batch: x1 and x2 must have the same structure; got "
                     f"{t1} and {t2}.")
  for a, b in zip(l1, l2):
    if a.shape[1:] != b.shape[1:]:
      raise ValueError(f"batch: x1 and x2 must have the same shape apart from "
                       f"the sample axis; got x1 {a.shape} and x2 {b.shape}.")
  return x1, x2


def _n(tree) -> int:
  return jax.tree_util.tree_leaves(tree)[0].shape[0]


def _hints(job: BlockJob) -> tuple[Optional[bool], Optional[bool]]:
  """``(diagonal_batch, diagonal_spatial)`` the call will use, if known."""
  kw = job.static_kwargs
  db, ds = kw.get("diagonal_batch"), kw.get("diagonal_spatial")
  reqs = getattr(job.kernel_fn, "reqs", None)
  if reqs is not None and hasattr(reqs, "default_diagonal_spatial"):
    db = reqs.diagonal_batch_ok if db is None else db
    ds = reqs.default_diagonal_spatial if ds is None else ds
  return db, ds


def _leaf_specs(job, leaves, grid: B.Grid, x1p, pair1, keys) -> list:
  """`LeafSpec` per output leaf: kind, and for symmetric grids the mirror."""
  db_hint, ds_hint = _hints(job)
  specs, probe = [], []
  for path, v, kernel in leaves:
    field = path.rsplit("/", 1)[-1]
    db = kernel.diagonal_batch if kernel is not None else db_hint
    kind = B.leaf_kind(field, tuple(v.shape), grid.b1, grid.b2, db)
    rule, source = None, None
    if kind == B.PAIR and grid.symmetric:
      ds = kernel.diagonal_spatial if kernel is not None else (
          ds_hint if field in ("nngp", "ntk") else None)
      if ds is not None:
        rule = B.BATCH if ds else B.ZIPPED
      else:
        probe.append(len(specs))
    specs.append(B.LeafSpec(path, kind, tuple(v.shape),
                            np.dtype(v.dtype).name, rule, source))
  # rowrow/colcol: the full cov1/cov2 is the nngp of x1 (x2) with itself.
  for k, s in enumerate(specs):
    if s.kind in (B.ROWROW, B.COLCOL):
      prefix = s.path[:-len(s.field)]
      nngp = [m for m, t in enumerate(specs)
              if t.path == prefix + "nngp" and t.kind == B.PAIR]
      if grid.symmetric and s.kind == B.ROWROW and nngp:
        src = f"leaf:{nngp[0]}"
      elif grid.symmetric:
        src = None if s.kind == B.COLCOL else "aux_cov1"
      else:
        src = "aux_cov1" if s.kind == B.ROWROW else "aux_cov2"
      specs[k] = dataclasses.replace(s, source=src)
  if probe:
    rules = _probe_mirror(job, [specs[k] for k in probe], x1p, pair1, keys,
                          grid)
    for k, rule in zip(probe, rules):
      specs[k] = dataclasses.replace(specs[k], mirror=rule)
  return specs


def _probe_mirror(job, specs, x1p, pair1, keys, grid) -> list:
  """Mirror rules for pair leaves of unknown layout, read off a small
  symmetric kernel: the rule that maps ``K(x, x)`` onto itself, or None."""
  m = min(grid.n1, 3)
  if m < 2:  # one sample: one block, nothing to mirror
    return [B.BATCH] * len(specs)
  take = lambda t: jax.tree_util.tree_map(lambda a: a[:m], t)
  dyn_args, dyn_kwargs = job.dynamic()
  out = job.fn(True)(take(x1p), None, dyn_args, dyn_kwargs, take(pair1),
                     take(pair1), keys)
  vals = {p: np.asarray(v) for p, v, _ in B.flatten_output(out)[1]}
  rules = []
  for s in specs:
    v = vals[s.path].astype(np.float64)
    tol = 1e-4 * max(float(np.max(np.abs(v))), 1e-30)
    ok = [r for r in ((B.ZIPPED, B.BATCH) if (v.ndim - 2) % 2 == 0
                      else (B.BATCH,))
          if np.allclose(v, B.mirror(v, r), rtol=1e-4, atol=tol)]
    if v.ndim == 2 and ok:
      rules.append(B.BATCH)
    else:
      rules.append(ok[0] if len(ok) == 1 else None)
  return rules
