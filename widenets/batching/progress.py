"""Progress reporting for batched kernels: a tqdm bar or a callback."""
from __future__ import annotations

from typing import Callable, Union

__all__ = ["Progress", "make_progress"]


class Progress:
  """Counts finished blocks; reports to tqdm and/or a callback.

  ``callback(done, total)`` is called after every finished block (``done``
  includes blocks found already finished in a store).
  """

  def __init__(self, total: int, initial: int = 0, bar=None,
               callback: Callable[[int, int], None] = None):
    self.total = total
    self.done = initial
    self._bar = bar
    self._callback = callback

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
    if self._callback is not None:
      self._callback(self.done, self.total)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def make_progress(progress: Union[bool, Callable, None], total: int,
                  initial: int = 0, desc: str = "kernel blocks") -> Progress:
  """``progress``: False/None (silent), True (tqdm bar) or a callable."""
  if progress is None or progress is False:
    return Progress(total, initial)
  if callable(progress) and progress is not True:
    return Progress(total, initial, callback=progress)
  try:
    from tqdm.auto import tqdm
  except ImportError as e:
    raise ImportError("batch(progress=True) needs tqdm: "
                      "pip install 'widenets[scale]' (or pip install tqdm)."
                      ) from e
  bar = tqdm(total=total, initial=initial, desc=desc, unit="block",
             dynamic_ncols=True)
  return Progress(total, initial, bar=bar)
