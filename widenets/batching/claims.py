"""What a kernel store owns: its marker file and its per-block claim files.

A store directory is ours only if it holds `MARKER`, written before anything
else when the store is created; a store never writes into, overwrites or
removes anything in a directory without it (a non-empty directory without the
marker is refused untouched).

Several processes may resume one store at once: before computing block
``(i, j)`` a process creates ``claims/<i>_<j>`` exclusively (``O_EXCL``) with
its pid and host, and removes it once the block and its checksum are written.
A claim whose process is gone (same host, pid not running) is stale and taken
over; a claim from another host is honoured until that host's process removes
it (delete ``claims/`` by hand after a crashed remote worker).
"""
from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

__all__ = ["MARKER", "check_path", "prepare_dir", "is_ours", "Claims"]

MARKER = "widenets_store.json"
_CLAIMS = "claims"


def check_path(path) -> str:
  """A store path as a string: explicit, not empty, not a file."""
  if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
    raise ValueError(f"batch: store must be a directory path (str or "
                     f"os.PathLike) or None; got {type(path).__name__} "
                     f"{path!r}.")
  path = os.fspath(path)
  if not isinstance(path, str) or not path.strip():
    raise ValueError(f"batch: store must name a directory explicitly; got "
                     f"{path!r} (an empty path would write into the current "
                     f"directory). Pass e.g. store='kernel.zarr', or "
                     f"store=None for no store.")
  if os.path.isfile(path):
    raise ValueError(f"batch: store path {path!r} is a file; expected a "
                     f"directory (a widenets store) or a path that does not "
                     f"exist yet.")
  return path


def is_ours(path: str) -> bool:
  """Whether ``path`` is a directory holding our marker."""
  return os.path.isfile(os.path.join(path, MARKER))


def refuse_foreign(path: str) -> None:
  """Raises unless ``path`` is missing, empty, or ours."""
  if os.path.isdir(path) and os.listdir(path) and not is_ours(path):
    raise ValueError(f"batch: store path {path!r} is a non-empty directory "
                     f"that is not a widenets store (it has no {MARKER}); "
                     f"nothing in it was changed. Pick a new path.")


def prepare_dir(path: str, fmt: int) -> None:
  """Makes ``path`` a directory that is ours (marker first), or refuses."""
  refuse_foreign(path)
  os.makedirs(path, exist_ok=True)
  if is_ours(path):
    return
  try:
    fd = os.open(os.path.join(path, MARKER),
                 os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:  # another process marked it first
    return
  with os.fdopen(fd, "w") as f:
    json.dump({"widenets_store": fmt}, f)


def _alive(owner: dict) -> bool:
  """Whether the claim's process may still be running."""
  if "stale" in owner:
    return not owner["stale"]
  if owner.get("host") != socket.gethostname():
    return True
  pid = owner.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class Claims:
  """Exclusive per-block claim files under ``<store>/claims``."""

  # A claim file still empty after this long was left by a process killed
  # between creating and writing it.
  EMPTY_STALE_S = 30.0

  def __init__(self, path: str):
    if not is_ours(path):
      raise ValueError(f"batch: {path!r} is not a widenets store.")
    self.dir = os.path.join(path, _CLAIMS)
    self.me = {"pid": os.getpid(), "host": socket.gethostname()}
    self.held: set = set()

  def _file(self, name: str) -> str:
    return os.path.join(self.dir, name)

  def _owner(self, name: str) -> Optional[dict]:
    try:
      with open(self._file(name)) as f:
        text = f.read()
      mtime = os.path.getmtime(self._file(name))
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except ValueError:
      # Being written, or left empty by a process killed right after
      # creating it.
      return {"stale": time.time() - mtime > self.EMPTY_STALE_S}

  def try_claim(self, name: str) -> bool:
    """Claims ``name``; False if a running process holds it."""
    os.makedirs(self.dir, exist_ok=True)
    for _ in range(2):
      try:
        fd = os.open(self._file(name), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                     0o644)
      except FileExistsError:
        owner = self._owner(name)
        if owner is not None and _alive(owner):
          return False
        try:  # stale: its process is gone
          os.remove(self._file(name))
        except FileNotFoundError:
          pass
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self.me, f)
      self.held.add(name)
      return True
    return False

  def claim_waiting(self, name: str, poll: float = 0.1) -> None:
    """Claims ``name``, waiting while a running process holds it."""
    while not self.try_claim(name):
      time.sleep(poll)

  def release(self, name: str) -> None:
    if name in self.held:
      self.held.discard(name)
      try:
        os.remove(self._file(name))
      except FileNotFoundError:
        pass

  def release_all(self) -> None:
    for name in list(self.held):
      self.release(name)
