"""Kernels at scale: Dask arrays over kernel blocks, clusters, stores.

* `kernel_array`: a kernel as a lazy ``dask.array`` (chunks = kernel blocks),
  computed by any Dask scheduler; ``.to_zarr()`` persists it.
* `local_client`: a ``dask.distributed`` client on a local cluster (for
  SLURM or Kubernetes, make the cluster with dask-jobqueue/dask-kubernetes and
  pass its client around instead).
* `DaskCG`: exact kernel regression whose CG products run on the cluster
  where the kernel blocks live (a large solver for ``gp_inference``).
* `open_store`: read back a store written by ``batch(..., store=PATH)``.

Needs the ``scale`` extra: ``pip install 'widenets[scale]'``.
"""
from ..batching.store import open_store
from .cluster import local_client
from .dask_array import kernel_array
from .dask_cg import DaskCG

__all__ = ["kernel_array", "local_client", "open_store", "DaskCG"]
