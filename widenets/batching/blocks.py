"""The block grid of a batched kernel, and how each output leaf is assembled.

A kernel over inputs ``x1`` (``N1`` samples) and ``x2`` (``N2``) is split into
blocks of ``b1 x b2`` sample pairs. Block ``(i, j)`` is the kernel of rows
``x1[i*b1:(i+1)*b1]`` against ``x2[j*b2:(j+1)*b2]``. The last row/column block
is *padded* with repeated valid samples up to the block size (so every block
has the same shape and compiles once) and trimmed afterwards.

For ``x2=None`` (``symmetric``) only blocks ``i <= j`` are computed: a diagonal
block runs ``kernel_fn(x_i, None)`` (which itself computes only its own upper
triangle), and block ``(j, i)`` is the mirror of ``(i, j)``:
``K[b, a, x', x, y', y] = K[a, b, x, x', y, y']`` (batch axes swapped, zipped
spatial pairs swapped) or, for spatially diagonal layouts, batch axes only.

An output of ``kernel_fn`` (a `Kernel`, namedtuple, tuple/list/dict of arrays,
or one array) is flattened to named *leaves*; each leaf has a *kind* that says
how blocks combine into the full result:

==========  ======================  ==========================================
kind        block shape             full shape / source
==========  ======================  ==========================================
``pair``    ``(b1, b2) + S``        ``(N1, N2) + S`` (nngp, ntk, empirical ...)
``row``     ``(b1,) + S``           ``(N1,) + S`` (cov1, mask1)
``col``     ``(b2,) + S``           ``(N2,) + S`` (cov2, mask2)
``rowrow``  ``(b1, b1) + S``        ``(N1, N1) + S``: cov1 of diagonal_batch=False
``colcol``  ``(b2, b2) + S``        ``(N2, N2) + S``: cov2 of diagonal_batch=False
``flag``    ``()``                  ``x1_is_x2``
``const``   anything else           taken from the first block
==========  ======================  ==========================================
"""
from __future__ import annotations

import dataclasses
import importlib
import math
from typing import Any, Iterator, Optional

import jax.numpy as jnp
import numpy as np

from ..kernel import ARRAY_FIELDS, Kernel, namedtuple_type

__all__ = ["Grid", "LeafSpec", "flatten_output", "unflatten_output",
           "pad_rows", "mirror", "mirror_perm", "leaf_kind", "full_shape",
           "row_source", "owned_region"]

PAIR, ROW, COL, ROWROW, COLCOL, FLAG, CONST = (
    "pair", "row", "col", "rowrow", "colcol", "flag", "const")

# Mirror rules for a pair leaf of a symmetric kernel.
ZIPPED = "zipped"     # (a, b, x, x', y, y') -> (b, a, x', x, y', y)
BATCH = "batch"       # (a, b, ...) -> (b, a, ...)


@dataclasses.dataclass(frozen=True)
class Grid:
  """Blocks of ``b1 x b2`` sample pairs over an ``n1 x n2`` kernel."""
  n1: int
  n2: int
  b1: int
  b2: int
  symmetric: bool

  def __post_init__(self):
    if self.symmetric and (self.n1 != self.n2 or self.b1 != self.b2):
      raise ValueError("A symmetric grid needs n1 == n2 and b1 == b2.")

  @property
  def nb1(self) -> int:
    return max(1, math.ceil(self.n1 / self.b1))

  @property
  def nb2(self) -> int:
    return max(1, math.ceil(self.n2 / self.b2))

  @property
  def padded1(self) -> int:
    return self.nb1 * self.b1

  @property
  def padded2(self) -> int:
    return self.nb2 * self.b2

  def rows(self, i: int) -> slice:
    return slice(i * self.b1, min(self.n1, (i + 1) * self.b1))

  def cols(self, j: int) -> slice:
    return slice(j * self.b2, min(self.n2, (j + 1) * self.b2))

  def valid(self, i: int, j: int) -> tuple[int, int]:
    """Number of real (unpadded) rows and columns of block ``(i, j)``."""
    r, c = self.rows(i), self.cols(j)
    return r.stop - r.start, c.stop - c.start

  def tasks(self, mirrored: bool) -> Iterator[tuple[int, int]]:
    """Blocks to compute, row-major: the upper triangle if ``mirrored``."""
    for i in range(self.nb1):
      for j in range(self.nb2):
        if not (mirrored and j < i):
          yield i, j

  def asdict(self) -> dict:
    return dataclasses.asdict(self)


def pad_rows(x, n_to: int):
  """Pads axis 0 of an array to ``n_to`` by repeating valid rows (a numpy
  array stays numpy, on the host).

  Repeated real samples (not zeros) keep every kernel well defined on the
  padding (zeros would give NaN after e.g. LayerNorm); they are trimmed away.
  """
  n = x.shape[0]
  if n == n_to:
    return x
  extra = np.arange(n_to - n) % n
  concatenate = np.concatenate if isinstance(x, np.ndarray) else \
      jnp.concatenate
  return concatenate([x, x[extra]], axis=0)


def mirror_perm(ndim: int, rule: str) -> tuple:
  """Axis permutation taking block ``(i, j)`` of a pair leaf to ``(j, i)``."""
  perm = [1, 0]
  if rule == ZIPPED:
    for a in range((ndim - 2) // 2):
      perm += [2 + 2 * a + 1, 2 + 2 * a]
  else:
    perm += list(range(2, ndim))
  return tuple(perm)


def mirror(block, rule: str):
  """The transposed block (numpy or jax array, same type back)."""
  return block.transpose(mirror_perm(block.ndim, rule))


# -- output structure ---------------------------------------------------------

_KERNEL_ARRAYS = ARRAY_FIELDS
_KERNEL_STATIC = ("is_gaussian", "is_reversed", "is_input", "diagonal_batch",
                  "diagonal_spatial", "shape1", "shape2", "batch_axis",
                  "channel_axis", "packed")


def _jsonable(v):
  if isinstance(v, (tuple, list)):
    return [_jsonable(a) for a in v]
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.bool_,)):
    return bool(v)
  return v


def _tuplify(v):
  if isinstance(v, list):
    return tuple(_tuplify(a) for a in v)
  return v


# Namedtuple classes seen in outputs of this process (many are made on the
# fly), so rebuilt outputs have the very same class.
_CLASSES: dict = {}


def _is_namedtuple(x) -> bool:
  return isinstance(x, tuple) and hasattr(x, "_fields")


def flatten_output(out) -> tuple[dict, list[tuple[str, Any, Optional[Kernel]]]]:
  """``(description, [(path, leaf, kernel), ...])`` of a kernel's output.

  The description is JSON-serializable (it goes into store metadata) and
  `unflatten_output` rebuilds the same structure from it. A path ends with
  the field name that decides the leaf's kind (``'nngp'``, ``'cov1'``, ...);
  ``kernel`` is the `Kernel` holding the leaf (its layout flags), or None.
  """
  leaves: list = []

  def walk(x, path, kernel=None):
    if x is None:
      return {"type": "none"}
    if isinstance(x, Kernel):
      fields = {}
      for f in _KERNEL_ARRAYS:
        fields[f] = walk(getattr(x, f), path + (f,), x)
      static = {f: _jsonable(getattr(x, f)) for f in _KERNEL_STATIC}
      return {"type": "kernel", "fields": fields, "static": static}
    if _is_namedtuple(x):
      _CLASSES[(type(x).__module__, type(x).__qualname__,
                tuple(x._fields))] = type(x)
      return {"type": "namedtuple", "name": type(x).__name__,
              "module": type(x).__module__,
              "qualname": type(x).__qualname__,
              "fields": list(x._fields),
              "items": [walk(v, path + (f,)) for f, v in zip(x._fields, x)]}
    if isinstance(x, (tuple, list)):
      return {"type": type(x).__name__,
              "items": [walk(v, path + (str(i),)) for i, v in enumerate(x)]}
    if isinstance(x, dict):
      keys = list(x)
      return {"type": "dict", "keys": [str(k) for k in keys],
              "items": [walk(x[k], path + (str(k),)) for k in keys]}
    leaves.append(("/".join(path) or "kernel", x, kernel))
    return {"type": "leaf", "index": len(leaves) - 1}

  desc = walk(out, ())
  return desc, leaves


def unflatten_output(desc: dict, leaves: list, fix_static=None):
  """Inverse of `flatten_output` with new leaves.

  ``fix_static(static_dict) -> static_dict`` adjusts a `Kernel`'s static
  fields (its ``shape1``/``shape2`` batch sizes).
  """
  def build(d):
    t = d["type"]
    if t == "none":
      return None
    if t == "leaf":
      return leaves[d["index"]]
    if t == "kernel":
      static = {k: _tuplify(v) for k, v in d["static"].items()}
      if fix_static is not None:
        static = fix_static(static)
      arrays = {f: build(v) for f, v in d["fields"].items()}
      return Kernel(**arrays, **static)
    if t == "namedtuple":
      cls = _namedtuple_class(d)
      return cls(*[build(v) for v in d["items"]])
    if t in ("tuple", "list"):
      items = [build(v) for v in d["items"]]
      return tuple(items) if t == "tuple" else items
    if t == "dict":
      return {k: build(v) for k, v in zip(d["keys"], d["items"])}
    raise ValueError(f"Unknown output description {t!r}.")

  return build(desc)


def _namedtuple_class(d: dict):
  """The original namedtuple class if importable (same fields), else an
  equivalent one."""
  seen = _CLASSES.get((d["module"], d["qualname"], tuple(d["fields"])))
  if seen is not None:
    return seen
  try:
    obj = importlib.import_module(d["module"])
    for part in d["qualname"].split("."):
      obj = getattr(obj, part)
    if tuple(getattr(obj, "_fields", ())) == tuple(d["fields"]):
      return obj
  except Exception:  # a local or dynamically made class
    pass
  return namedtuple_type(d["name"], tuple(d["fields"]))


def kernel_fields(desc: dict) -> Iterator[dict]:
  """Every `Kernel` node of a description (to read its static layout)."""
  if desc["type"] == "kernel":
    yield desc
  for v in desc.get("items", []):
    yield from kernel_fields(v)


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """How one output leaf is assembled from blocks.

  Attributes:
    path: the leaf's name in the output structure.
    kind: one of ``pair, row, col, rowrow, colcol, flag, const``.
    block_shape: shape of the leaf in one (full-size) block.
    dtype: numpy dtype name.
    mirror: for ``pair`` leaves of a symmetric grid, ``'zipped'``,
      ``'batch'`` or ``None`` (cannot be mirrored: compute both halves).
    source: for ``rowrow``/``colcol`` leaves, where the full matrix comes
      from: ``'leaf:<k>'`` (the symmetric kernel's own nngp leaf ``k``) or
      ``'aux_cov1'``/``'aux_cov2'`` (a nested symmetric job).
  """
  path: str
  kind: str
  block_shape: tuple
  dtype: str
  mirror: Optional[str] = None
  source: Optional[str] = None

  @property
  def field(self) -> str:
    return self.path.rsplit("/", 1)[-1]


def leaf_kind(field: str, shape: tuple, b1: int, b2: int,
              diagonal_batch: Optional[bool]) -> str:
  """Kind of a leaf from its field name and block shape (see module doc)."""
  nd = len(shape)
  if field == "x1_is_x2":
    return FLAG
  if field in ("cov1", "mask1"):
    if field == "cov1" and diagonal_batch is False and shape[:2] == (b1, b1):
      return ROWROW
    return ROW if nd >= 1 and shape[0] == b1 else CONST
  if field in ("cov2", "mask2"):
    if field == "cov2" and diagonal_batch is False and shape[:2] == (b2, b2):
      return COLCOL
    return COL if nd >= 1 and shape[0] == b2 else CONST
  if nd >= 2 and shape[:2] == (b1, b2):
    return PAIR
  return CONST


def full_shape(spec: LeafSpec, grid: Grid) -> tuple:
  """Shape of the assembled leaf."""
  s = tuple(spec.block_shape)
  if spec.kind == PAIR:
    return (grid.n1, grid.n2) + s[2:]
  if spec.kind == ROW:
    return (grid.n1,) + s[1:]
  if spec.kind == COL:
    return (grid.n2,) + s[1:]
  if spec.kind == ROWROW:
    return (grid.n1, grid.n1) + s[2:]
  if spec.kind == COLCOL:
    return (grid.n2, grid.n2) + s[2:]
  return s


def row_source(grid: Grid, i: int) -> int:
  """The block of row ``i`` whose row leaves (cov1, mask1) are kept."""
  return i if grid.symmetric else 0


def owned_region(spec: LeafSpec, grid: Grid, i: int,
                 j: int) -> Optional[tuple]:
  """The index into leaf ``spec``'s full array that block ``(i, j)`` writes
  (for a mirrored block ``(j, i)``, its mirror's region), or None.

  Pair leaves: the block's rows and columns; row leaves: one block per row
  (`row_source`); column leaves: the first row of blocks; const leaves: block
  ``(0, 0)``; flags and full covariances: no block.
  """
  if spec.kind == PAIR:
    return (grid.rows(i), grid.cols(j))
  if spec.kind == ROW:
    return (grid.rows(i),) if j == row_source(grid, i) else None
  if spec.kind == COL:
    return (grid.cols(j),) if i == 0 else None
  if spec.kind == CONST:
    return (Ellipsis,) if (i, j) == (0, 0) else None
  return None


def fix_kernel_shapes(grid: Grid):
  """``fix_static`` for `unflatten_output`: batch sizes of the full kernel."""

  def fix(static):
    static = dict(static)
    ax = static.get("batch_axis") or 0
    for key, n in (("shape1", grid.n1), ("shape2", grid.n2)):
      shape = static.get(key)
      if shape is not None and len(shape) > ax:
        static[key] = tuple(shape[:ax]) + (n,) + tuple(shape[ax + 1:])
    return static

  return fix
