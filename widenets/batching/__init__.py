"""Batched kernels: blocks, symmetry, devices, progress and disk stores.

``batch(kernel_fn, batch_size, device_count, store_on_device)`` is
neural-tangents' ``nt.batch`` without its limits (any batch size, ``x2=None``
at half cost, ``diagonal_batch=False``, several devices through
``jax.sharding``, ``batch_size='auto'``), plus ``progress=`` (a tqdm bar) and
``store=PATH`` (a resumable zarr store; `open_store` reads it back).

Modules: `blocks` (grid, padding, mirroring, output structure), `job` (how a
kernel function is called on one block), `plan` (validated inputs, leaf
layouts), `devices` (placement and automatic block size), `assemble`
(collecting blocks), `store` (zarr, checksums), `claims` (the store's marker
and per-block claims), `resume` (what a rerun computes), `progress`.
"""
from .runner import BatchedKernelFn, RunStats, batch
from .store import StoreCorruptionError, StoreMismatchError, open_store

__all__ = ["batch", "open_store", "BatchedKernelFn", "RunStats",
           "StoreMismatchError", "StoreCorruptionError"]
