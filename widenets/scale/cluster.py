"""Small helpers around ``dask.distributed`` clusters."""
from __future__ import annotations

from typing import Optional

__all__ = ["local_client"]


def local_client(n_workers: int = 2, threads_per_worker: int = 1,
                 processes: bool = True, memory_limit: Optional[str] = "auto",
                 **kwargs):
  """A ``distributed.Client`` on a new ``LocalCluster``.

  One thread per worker suits JAX, which parallelizes each block itself.
  Close it with ``client.close(); client.cluster.close()`` (or use it as a
  context manager).
  """
  try:
    from distributed import Client, LocalCluster
  except ImportError as e:
    raise ImportError("local_client needs dask.distributed: pip install "
                      "'widenets[scale]'.") from e
  cluster = LocalCluster(n_workers=n_workers,
                         threads_per_worker=threads_per_worker,
                         processes=processes, memory_limit=memory_limit,
                         **kwargs)
  return Client(cluster)
