"""What the large-``n`` solvers' zarr stores share: ownership, identity,
checkpoints.

A solver store is a directory the solver creates and owns: the marker of
`widenets.batching.claims` is written first (a non-empty directory without it
is refused untouched), then a zarr group whose attribute ``attr`` holds the
metadata, written last (a store without it is recreated). Stores written
before the marker existed are recognised by that attribute alone.

Identity: the metadata holds the sha256 of the inputs, the kernel function's
description and a *probe* (the kernel of the first few examples, which tells
apart networks whose descriptions happen to agree); a store of other inputs,
another network or another layout is refused with `StoreMismatchError`.

Checkpoints of iterative solvers (`save_state` / `load_state`) are ``.npz``
files in the store tagged with a key, replaced atomically (``os.replace``),
so a kill while writing one keeps the previous one.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Optional

import numpy as np

from ..batching import claims
from ..batching.job import fingerprint
from ..batching.store import StoreMismatchError, import_zarr
from .block_kernel import BlockKernel

__all__ = ["SolverStore", "StoreMismatchError", "kernel_meta"]

_PROBE = 4


def kernel_meta(kernel: BlockKernel, x: np.ndarray, **extra) -> dict:
  """Metadata identifying the kernel of ``x`` (JSON-normalised)."""
  k = min(_PROBE, x.shape[0])
  probe = kernel(x[:k])
  return json.loads(json.dumps({
      "n": int(x.shape[0]), "block_size": kernel.block_size,
      "fingerprint": fingerprint(x), "kernel": kernel.description(),
      "probe": {g: np.asarray(v, np.float64).ravel().tolist()
                for g, v in probe.items()}, **extra}))


class SolverStore:
  """A zarr group at ``path`` (or nothing, ``path=None``) owned by a solver.

  Subclasses set ``ATTR`` and ``FORMAT``, and create their arrays in
  ``_create(group)``; ``extra_keys`` are further metadata entries that must
  match (e.g. the centres of a Nystrom store).
  """

  ATTR = ""
  FORMAT = 1
  WHAT = "kernel store"

  def __init__(self, meta: dict, path: Optional[str],
               extra_keys: tuple = ()):
    self.meta = {"format": self.FORMAT, **meta}
    self.path = None if path is None else claims.check_path(path)
    self.group = None
    self._extra = extra_keys
    if self.path is not None:
      self._open(self.path)

  def _old_meta(self, path: str) -> Optional[dict]:
    if not (os.path.isdir(path) and os.listdir(path)):
      return None
    try:
      attrs = import_zarr().open_group(path, mode="r").attrs.asdict()
    except Exception:  # noqa: BLE001 - not a zarr group
      attrs = {}
    old = attrs.get(self.ATTR)
    other = sorted(k for k in attrs if k.startswith("widenets"))
    if old is None and (other or not claims.is_ours(path)):
      what = f" (it holds {other[0]!r})" if other else ""
      raise ValueError(f"store path {path!r} is a non-empty directory that "
                       f"is not a widenets {self.WHAT}{what}; nothing in it "
                       f"was changed. Pick a new path.")
    return old

  def _open(self, path: str) -> None:
    zarr = import_zarr()
    old = self._old_meta(path)
    if old is not None:
      self._check_same(path, old)
      self.group = zarr.open_group(path, mode="r+")
      return
    claims.prepare_dir(path, self.FORMAT)
    group = zarr.open_group(path, mode="a")
    self._create(group)
    group.attrs[self.ATTR] = self.meta  # last: see the module doc
    self.group = group

  def _create(self, group) -> None:
    raise NotImplementedError

  def _check_same(self, path: str, old: dict) -> None:
    new = self.meta
    if old.get("format") != new["format"]:
      raise StoreMismatchError(f"Store {path!r} has format "
                               f"{old.get('format')}; expected "
                               f"{new['format']}.")
    if old["fingerprint"] != new["fingerprint"] or old["n"] != new["n"]:
      raise StoreMismatchError(
          f"Store {path!r} holds the kernel of other training inputs (n="
          f"{old['n']}, sha256 {old['fingerprint'][:16]}...); these inputs "
          f"have n={new['n']}, sha256 {new['fingerprint'][:16]}... Use a new "
          f"store path for a new dataset.")
    if old["kernel"] != new["kernel"]:
      raise StoreMismatchError(
          f"Store {path!r} holds the kernel of another network or call: "
          f"{old['kernel']} vs {new['kernel']}. Use a new store path.")
    if old["block_size"] != new["block_size"]:
      raise StoreMismatchError(
          f"Store {path!r} was written with block_size={old['block_size']}; "
          f"this call has block_size={new['block_size']}. Pass "
          f"block_size={old['block_size']} to reuse it.")
    for key in self._extra:
      if old.get(key) != new.get(key):
        raise StoreMismatchError(
            f"Store {path!r} was written with another {key} ("
            f"{str(old.get(key))[:40]} vs {str(new.get(key))[:40]}). Use a "
            f"new store path.")
    for g, vals in new["probe"].items():
      ref = np.asarray(old["probe"].get(g, []))
      if ref.shape != np.shape(vals) or not np.allclose(
          ref, vals, rtol=1e-4, atol=1e-6 * float(np.max(np.abs(ref)) + 1)):
        raise StoreMismatchError(
            f"Store {path!r}: the {g!r} kernel of the first {_PROBE} "
            f"examples differs from this network's ({ref[:3]} vs "
            f"{np.asarray(vals)[:3]}...): another network wrote it. Use a "
            f"new store path.")

  def nbytes_on_disk(self) -> int:
    if self.path is None:
      return 0
    total = 0
    for root, _, files in os.walk(self.path):
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total

  # -- solver checkpoints ---------------------------------------------------
  def _state_path(self, name: str) -> Optional[str]:
    return None if self.path is None else os.path.join(self.path,
                                                       f"{name}.npz")

  def save_state(self, name: str, key: str, arrays: dict) -> None:
    """Atomically writes ``arrays`` (tagged with ``key``) as ``name``."""
    path = self._state_path(name)
    if path is None:
      return
    fd, tmp = tempfile.mkstemp(dir=self.path, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, __key__=np.asarray(key), **arrays)
    os.replace(tmp, path)

  def load_state(self, name: str, key: str) -> Optional[dict]:
    """The arrays saved as ``name`` with the same ``key``, or None."""
    path = self._state_path(name)
    if path is None or not os.path.exists(path):
      return None
    with np.load(path) as f:
      if str(f["__key__"]) != key:
        return None
      return {k: f[k] for k in f.files if k != "__key__"}

  def remove_state(self, name: str) -> None:
    path = self._state_path(name)
    if path is not None and os.path.exists(path):
      os.remove(path)

  def checkpointer(self, name: str, key: str) -> Callable[[dict], None]:
    return lambda state: self.save_state(name, key, state)
