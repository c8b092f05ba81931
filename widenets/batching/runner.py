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
from ..stax.inputs import is_kernel_tree
from ..stax.overflow import KernelOverflowError
from . import assemble, blocks, claims, devices, plan, resume
from .job import BlockJob, fingerprint, has_tracers
from .progress import make_progress
from .store import FORMAT, BlockStore, read_meta

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
    damaged: blocks of the store that failed their checksum and were
      computed again, with the reason.
    verified: the stored block computed again to check that the store holds
      this computation (None without a store or finished block).
  """
  grid: Optional[blocks.Grid] = None
  mirrored: bool = False
  computed: int = 0
  skipped: int = 0
  devices: int = 1
  seconds: float = 0.0
  computed_blocks: list = dataclasses.field(default_factory=list)
  per_device: dict = dataclasses.field(default_factory=dict)
  damaged: dict = dataclasses.field(default_factory=dict)
  verified: Optional[tuple] = None


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
          progress: Union[bool, Callable[[int, int], None]] = False,
          store_key: Optional[str] = None) -> "BatchedKernelFn":
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
    free device memory, from XLA's memory analysis of the compiled block;
  * inside ``jax.jit``/``jax.grad``/``jax.vmap``, and as the ``kernel_fn``
    of another `batch`, the blocks are traced into the enclosing
    computation (same values; the host-side input check, mirroring of
    outputs of unstated layout, devices, ``store_on_device=False`` and
    ``progress`` do not apply there, and ``store`` is refused).

  neural-tangents' private ``_serial(f, batch_size, store_on_device)`` and
  ``_parallel(f, device_count=d)`` are ``batch(f, batch_size,
  device_count=0, store_on_device=...)`` and ``batch(f, 0, device_count=d)``.

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
    store: a directory (new, empty, or a store made by `batch`; anything
      else is refused untouched): write blocks into a zarr store as they
      finish, each with a checksum, with the inputs' fingerprint and the
      network's description. Calling again with the same store computes only
      the missing or damaged blocks (after a crash, say, or from several
      processes at once: blocks are claimed, not shared); a store of other
      inputs or another computation is refused (see docs/scale.md for what
      is checked). Read it back with `widenets.batching.open_store`.
    progress: ``True`` for a tqdm bar (blocks done, ETA), or a callable
      ``progress(done, total)`` called after each block.
    store_key: an optional string recorded in the store; a store with
      another key is refused (e.g. a version of your kernel function's code).

  Returns:
    A function with the signature of ``kernel_fn`` returning the same values
    (to float round-off); its ``last_run`` attribute holds a `RunStats`.
  """
  _check_batch_size(batch_size)
  devices.select_devices(device_count)  # validates early
  if store is not None:
    store = claims.check_path(store)
    claims.refuse_foreign(store)
  if store_key is not None and not isinstance(store_key, str):
    raise ValueError(f"batch: store_key must be a string or None; got "
                     f"{type(store_key).__name__} {store_key!r}.")
  fn = BatchedKernelFn(kernel_fn, batch_size, device_count, store_on_device,
                       store, progress)
  fn.store_key = store_key
  return fn


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
    self.store_key = None
    self.last_run = RunStats()
    self.__wrapped__ = kernel_fn
    self.__name__ = getattr(kernel_fn, "__name__", "kernel_fn")
    self.__doc__ = getattr(kernel_fn, "__doc__", None)
    if hasattr(kernel_fn, "reqs"):
      self.reqs = kernel_fn.reqs

  def __repr__(self) -> str:
    return f"<batched {getattr(self.kernel_fn, '__name__', self.kernel_fn)!r}>"

  def __call__(self, x1_or_kernel, x2=None, *args, **kwargs):
    job = BlockJob(self.kernel_fn, args, kwargs)
    start = time.perf_counter()
    traced = has_tracers((x1_or_kernel, x2)) or job.holds_tracers()
    if is_kernel_tree(x1_or_kernel):
      if x2 is not None:
        raise ValueError("batch: pass either a Kernel or inputs (x1, x2), "
                         "not a Kernel and x2.")
      out = self._run_kernel(job, x1_or_kernel, traced)
    elif traced:
      out = self._run_traced(job, x1_or_kernel, x2)
    else:
      out = self._run(job, x1_or_kernel, x2, self.store, self.progress)
    self.last_run.seconds = time.perf_counter() - start
    return out

  # -- inputs ------------------------------------------------------------------
  def _block_sizes(self, job, x1, x2, n1, n2, devs, old_meta):
    bs = self.batch_size
    symmetric = x2 is None
    if old_meta is not None and bs == "auto":
      g = old_meta["grid"]
      return g["b1"], g["b2"]
    if bs == "auto":
      try:
        b = self._auto_size(job, x1, x2, max(n1, n2), devs[0])
      except Exception:  # noqa: BLE001 - kernel_fn cannot be traced
        b = _UNTRACEABLE_AUTO
      return min(b, n1), min(b, n2)
    if bs == 0:
      if len(devs) == 1:
        return n1, n2
      per = -(-n1 // len(devs))
      return (per, per) if symmetric else (per, n2)
    return min(bs, n1), min(bs, n2)

  def _auto_size(self, job, x1, x2, n_max, device) -> int:
    x2 = x1 if x2 is None else x2
    dyn_args, dyn_kwargs = job.dynamic()
    fn = job.fn(False)

    def spec(tree, b):
      return jax.tree_util.tree_map(
          lambda a: jax.ShapeDtypeStruct((b,) + tuple(a.shape[1:]),
                                         np.dtype(a.dtype)), tree)

    def block_bytes(b):
      p1 = {k: spec(v1, b) for k, (v1, _) in job.pair_kwargs.items()}
      p2 = {k: spec(v1 if v2 is None else v2, b)
            for k, (v1, v2) in job.pair_kwargs.items()}
      keys = None if job.rng is None else (job.rng, job.rng)
      args = (spec(x1, b), spec(x2, b), dyn_args, dyn_kwargs, p1, p2, keys)
      m = devices.compiled_bytes(fn, *args)
      if m is None:  # no memory analysis: outputs plus generous temporaries
        m = 4 * devices.output_bytes(jax.eval_shape(fn, *args))
      return m

    out = jax.eval_shape(fn, spec(x1, 2), spec(x2, 2), dyn_args, dyn_kwargs,
                         {k: spec(v1, 2) for k, (v1, _) in
                          job.pair_kwargs.items()},
                         {k: spec(v1 if v2 is None else v2, 2)
                          for k, (v1, v2) in job.pair_kwargs.items()},
                         None if job.rng is None else (job.rng, job.rng))
    per_pair = 0.0
    if self.store_on_device and self.store is None:
      per_pair = devices.output_bytes(out) / 4
    return devices.auto_batch_size(block_bytes, n_max,
                                   devices.free_memory(device),
                                   result_bytes_per_pair=per_pair)

  def _run(self, job: BlockJob, x1, x2, store_path, progress):
    symmetric = x2 is None
    x1, x2 = plan.validated_inputs(x1, x2)
    n1 = plan.n_samples(x1)
    n2 = n1 if symmetric else plan.n_samples(x2)
    devs = devices.select_devices(self.device_count)
    old = read_meta(store_path) if store_path else None
    b1, b2 = self._block_sizes(job, x1, x2, n1, n2, devs, old)
    if symmetric:
      b1 = b2 = max(b1, b2)
    grid = blocks.Grid(n1, n2, b1, b2, symmetric)
    mask = job.static_kwargs.get("mask_constant")
    plan.check_finite(x1, "x1", grid.b1, mask)
    if not symmetric:
      plan.check_finite(x2, "x2", grid.b2, mask)
    layout = plan.Layout(job, x1, x2, grid)

    # Output structure from one block, without computing it.
    xb1, xb2, p1, p2, keys = layout.inputs(0, 0)
    dyn_args, dyn_kwargs = job.dynamic()
    shape_out = job.structure(symmetric, xb1, xb2, dyn_args, dyn_kwargs, p1,
                              p2, keys)
    desc, leaves = blocks.flatten_output(shape_out)
    specs = plan.leaf_specs(job, leaves, grid, layout.x1p, layout.pair1, keys)
    mirrored = symmetric and all(
        s.mirror is not None for s in specs if s.kind == blocks.PAIR)

    stats = RunStats(grid=grid, mirrored=mirrored, devices=len(devs))
    self.last_run = stats
    all_tasks = list(grid.tasks(mirrored))
    store, tasks, redo = None, all_tasks, frozenset()
    if store_path is not None:
      architecture = dict(job.description(), store_key=self.store_key)
      meta = dict(format=FORMAT, fingerprint=fingerprint(
          x1, x2, job.arrays_fingerprint()), architecture=architecture,
          grid=grid.asdict(), structure=desc,
          leaves=[dataclasses.asdict(s) for s in specs], complete=False)
      store = BlockStore.open(store_path, meta)
      tasks, stats.damaged, intact = resume.blocks_to_compute(
          store, all_tasks, mirrored)
      redo = frozenset(t for t in tasks if t in {
          (min(b), max(b)) if mirrored else b for b in stats.damaged})
      if intact is not None:
        resume.check_same_computation(
            store, intact, lambda i, j: self._block_values(job, layout, specs,
                                                           i, j))
        stats.verified = intact
      if tasks and store.mode == "r":  # damaged blocks of a finished store
        store = BlockStore(store_path, store.meta, "r+")
    skipped = len(all_tasks) - len(tasks)

    sink = (assemble.StoreSink(store) if store is not None else
            assemble.MemorySink(specs, grid, self.store_on_device,
                                devs[0] if len(devs) > 1 else None))
    self._compute(job, layout, sink, store, tasks, redo, devs, progress,
                  stats, (len(all_tasks), skipped))
    stats.skipped = len(all_tasks) - stats.computed
    return self._finish(job, x1, x2, desc, specs, sink, store, store_path,
                        devs[0], stats)

  def _run_traced(self, job: BlockJob, x1, x2):
    """`_run` inside a trace (``jit``/``grad``/``vmap`` of the batched
    function, or a batched function batched again).

    The same grid, padding and mirroring, each block traced into the
    enclosing computation and the blocks concatenated (how XLA schedules
    them is its choice). What needs values is left out: host copies,
    finiteness checks (the NaN/inf of a block stays in the result, as in
    ``kernel_fn`` under ``jit``) and the probe of mirror rules (a pair leaf
    of unstated layout computes both halves); devices,
    ``store_on_device=False`` and ``progress`` do not apply.
    """
    if self.store is not None:
      raise ValueError("batch: store= needs concrete inputs, but this call "
                       "is traced (inside jax.jit, jax.grad or jax.vmap): "
                       "call the batched function outside the "
                       "transformation.")
    symmetric = x2 is None
    x1, x2 = plan.validated_inputs(x1, x2, host_copies=False)
    n1 = plan.n_samples(x1)
    n2 = n1 if symmetric else plan.n_samples(x2)
    devs = devices.select_devices(self.device_count)[:1]
    b1, b2 = self._block_sizes(job, x1, x2, n1, n2, devs, None)
    if symmetric:
      b1 = b2 = max(b1, b2)
    grid = blocks.Grid(n1, n2, b1, b2, symmetric)
    layout = plan.Layout(job, x1, x2, grid)
    dyn_args, dyn_kwargs = job.dynamic()
    xb1, xb2, p1, p2, keys = layout.inputs(0, 0)
    shape_out = job.structure(symmetric, xb1, xb2, dyn_args, dyn_kwargs, p1,
                              p2, keys)
    desc, leaves = blocks.flatten_output(shape_out)
    specs = plan.leaf_specs(job, leaves, grid, None, None, None, probe=False)
    mirrored = symmetric and all(
        s.mirror is not None for s in specs if s.kind == blocks.PAIR)
    stats = RunStats(grid=grid, mirrored=mirrored, devices=1)
    self.last_run = stats
    sink = assemble.MemorySink(specs, grid, True)
    for i, j in grid.tasks(mirrored):
      xb1, xb2, p1, p2, keys = layout.inputs(i, j)
      out = job.fn(symmetric and i == j)(xb1, xb2, dyn_args, dyn_kwargs, p1,
                                         p2, keys)
      sink.put(i, j, {p: v for p, v, _ in blocks.flatten_output(out)[1]},
               mirrored and i != j)
      stats.computed += 1
      stats.computed_blocks.append((i, j))
    return self._finish(job, x1, x2, desc, specs, sink, None, None, None,
                        stats, traced=True)

  def _block_values(self, job, layout, specs, i, j) -> dict:
    """Block ``(i, j)`` computed now, as trimmed numpy leaves by path."""
    inputs = layout.inputs(i, j)
    fn = job.fn(layout.symmetric and i == j, checked=True)
    dyn_args, dyn_kwargs = job.dynamic()
    out, ok = self._surfacing(job, layout, i, j, lambda: jax.block_until_ready(
        fn(inputs[0], inputs[1], dyn_args, dyn_kwargs, *inputs[2:])))
    if not bool(ok):
      self._explain(job, layout, i, j)
    vals = {p: v for p, v, _ in blocks.flatten_output(out)[1]}
    trimmed = {}
    for spec in specs:
      v = vals.get(spec.path)
      v = None if v is None else assemble.trim(spec, v, layout.grid, i, j)
      if v is not None:
        trimmed[spec.path] = np.asarray(v)
    return trimmed

  def _compute(self, job, layout, sink, store, tasks, redo, devs, progress,
               stats, counts):
    """Computes ``tasks`` into ``sink``, claiming each block of a store."""
    total, skipped = counts
    bar = make_progress(progress, total, skipped)
    dyn = {d: devices.put(job.dynamic(), d) for d in devs}
    needs_host = store is not None or not self.store_on_device
    lag = 2 * len(devs) if (needs_host or progress) else 0
    claim = claims.Claims(store.path) if store is not None and tasks else None
    mirrored, symmetric = stats.mirrored, layout.symmetric
    pending, unchecked = collections.deque(), []

    def retire():
      i, j, (out, ok) = pending.popleft()
      if lag:
        out, ok = self._surfacing(job, layout, i, j,
                                  lambda: jax.block_until_ready((out, ok)))
        if not bool(ok):  # before anything is written or kept
          self._explain(job, layout, i, j)
      else:
        unchecked.append((i, j, ok))
      vals = {p: v for p, v, _ in blocks.flatten_output(out)[1]}
      sink.put(i, j, vals, mirrored and i != j)
      if claim is not None:
        claim.release(resume.claim_name(i, j))
      stats.computed += 1
      stats.computed_blocks.append((i, j))
      bar.update(1)

    order = tasks if claim is None else resume.claimed(tasks, store, claim,
                                                       redo)
    try:
      t = 0
      for task in order:
        if task is None:  # waiting for other processes: finish ours first
          while pending:
            retire()
          continue
        i, j = task
        dev = devs[t % len(devs)]
        t += 1
        stats.per_device[dev.id] = stats.per_device.get(dev.id, 0) + 1
        xb1, xb2, p1, p2, keys = devices.put(layout.inputs(i, j), dev)
        fn = job.fn(symmetric and i == j, checked=True)
        pending.append((i, j, self._surfacing(
            job, layout, i, j,
            lambda: fn(xb1, xb2, *dyn[dev], p1, p2, keys))))
        while len(pending) > lag:
          retire()
      while pending:
        retire()
    finally:
      bar.close()
      if claim is not None:
        claim.release_all()
    for i, j, ok in unchecked:
      if not self._surfacing(job, layout, i, j, lambda: bool(ok)):
        self._explain(job, layout, i, j)

  def _surfacing(self, job, layout, i, j, thunk):
    """``thunk()``; an error raised while the compiled block ran (under the
    block's ``jax.jit``, ``kernel_fn`` reports an overflow from inside the
    computation) is explained like a non-finite block: ``kernel_fn`` reruns
    on the concrete block and raises its own error, naming the rows."""
    try:
      return thunk()
    except jax.errors.JaxRuntimeError as e:
      self._explain(job, layout, i, j, original=e)

  def _explain(self, job, layout, i, j, original=None):
    """Raises for a block with NaN or infinite values: ``kernel_fn``'s own
    error (run on the concrete block, naming the layer) or ours; with
    ``original`` (a runtime error of the compiled block), that error when
    the concrete rerun raises nothing."""
    where = layout.where(i, j)
    dyn_args, dyn_kwargs = job.dynamic()
    try:
      job.plain_fn(layout.symmetric and i == j)(*layout.inputs(i, j)[:2],
                                                dyn_args, dyn_kwargs,
                                                *layout.inputs(i, j)[2:])
    except (FloatingPointError, ValueError) as e:
      try:
        err = type(e)(f"batch: {where}: {e}")
      except Exception:  # noqa: BLE001 - an exception with another signature
        err = KernelOverflowError(f"batch: {where}: {e}")
      raise err from e
    if original is not None:
      raise original
    raise KernelOverflowError(
        f"batch: kernel_fn returned NaN or infinite values for {where} (its "
        f"inputs are finite). Check the kernel function, or enable float64 "
        f"with jax.config.update('jax_enable_x64', True) if it overflowed.")

  def _finish(self, job, x1, x2, desc, specs, sink, store, store_path,
              device0, stats, traced: bool = False):
    """The user-facing output: leaves from the sink, flags, nested
    ``diagonal_batch=False`` covariances; marks a store complete.
    ``traced``: the values are tracers, left as they are."""
    values, flags = {}, {}
    flag = same_inputs(x1, x2)
    for k, spec in enumerate(specs):
      if spec.kind == blocks.FLAG:
        values[k] = flags[k] = (jnp if traced else np).asarray(flag,
                                                               spec.dtype)
      elif spec.kind in (blocks.PAIR, blocks.ROW, blocks.COL, blocks.CONST):
        values[k] = sink.leaf(k)
    for k, spec in enumerate(specs):
      if (spec.kind not in (blocks.ROWROW, blocks.COLCOL) or
          spec.source is None):
        continue
      if spec.source.startswith("leaf:"):
        values[k] = values[int(spec.source[5:])]
      else:
        sub_x = x1 if spec.kind == blocks.ROWROW else x2
        sub_store = (None if store_path is None else
                     os.path.join(store_path, spec.source))
        sub_job = job.self_job("nngp", first=spec.kind == blocks.ROWROW)
        values[k] = (self._run_traced(sub_job, sub_x, None) if traced else
                     self._run(sub_job, sub_x, None, sub_store, False))
        self.last_run = stats
    if store is not None:
      store.set_complete(flags)
    if traced:
      pass
    elif store is not None or not self.store_on_device:
      values = {k: np.asarray(v) if v is not None else None
                for k, v in values.items()}
      if self.store_on_device:
        values = {k: None if v is None else jax.device_put(v, device0)
                  for k, v in values.items()}
    elif store is None:
      values = {k: None if v is None else jnp.asarray(v)
                for k, v in values.items()}
    return assemble.build_output(desc, specs, stats.grid, values)

  # -- Kernel inputs (neural-tangents' kernel_fn(kernel) form) ----------------
  def _run_kernel(self, job: BlockJob, k, traced: bool = False):
    if self.store is not None:
      raise ValueError("batch: store= needs array inputs (x1, x2), not a "
                       "Kernel.")
    first = jax.tree_util.tree_leaves(
        k, is_leaf=lambda l: isinstance(l, Kernel))[0]
    n1, n2 = first.nngp.shape[:2]
    devs = devices.select_devices(self.device_count)
    bs = self.batch_size
    if bs == "auto" or bs == 0:
      b1, b2 = n1, n2
    else:
      b1, b2 = min(bs, n1), min(bs, n2)
    grid = blocks.Grid(n1, n2, b1, b2, False)
    cov2_none = first.cov2 is None

    def block(i, j):
      return jax.tree_util.tree_map(
          lambda kk: kk.slice(grid.rows(i), grid.cols(j)), k,
          is_leaf=lambda l: isinstance(l, Kernel))

    dyn_args, dyn_kwargs = job.dynamic()
    fn = job.fn(True)
    # Traced kernels are placed by the enclosing computation.
    put = (lambda tree, _: tree) if traced else devices.put
    outs = {}
    for t, (i, j) in enumerate(grid.tasks(False)):
      dev = devs[t % len(devs)]
      outs[(i, j)] = fn(put(block(i, j), dev), None,
                        *put((dyn_args, dyn_kwargs), dev), {}, {}, None)
    desc, leaves = blocks.flatten_output(outs[(0, 0)])
    specs = [dataclasses.replace(s, kind=blocks.CONST)
             if s.kind == blocks.FLAG else s
             for s in plan.leaf_specs(job, leaves, grid, None, None, None)]
    sink = assemble.MemorySink(specs, grid, self.store_on_device or traced,
                               devs[0] if len(devs) > 1 and not traced
                               else None)
    for (i, j), out in outs.items():
      sink.put(i, j, {p: v for p, v, _ in blocks.flatten_output(out)[1]}, False)
    values = {k: sink.leaf(k) for k, s in enumerate(specs)
              if s.kind in (blocks.PAIR, blocks.ROW, blocks.COL, blocks.CONST)}
    if cov2_none:
      values = {k: None if specs[k].field == "cov2" else v
                for k, v in values.items()}
    self.last_run = RunStats(grid=grid, computed=len(outs),
                             devices=len(devs))
    return assemble.build_output(desc, specs, grid, values)


