"""`Kernel`: the covariances a layer's `kernel_fn` passes to the next layer.

Layout (shared by every layer):

* ``nngp``, ``ntk``: ``(N1, N2) + S`` where ``S`` is the spatial part:
  ``(X, Y, ...)`` if ``diagonal_spatial`` else ``(X, X', Y, Y', ...)``
  (spatial axes zipped pairwise). ``ntk`` may be a scalar ``0.`` right after the
  inputs (it is broadcast on first use), or ``None`` when it is not computed.
* ``cov1``/``cov2``: ``(N1,) + S`` if ``diagonal_batch`` else ``(N1, N1) + S``.
  ``cov2 is None`` means ``x2 is x1``.
* Channels never appear: they are the infinite axis.

Internally (never in a `Kernel` handed to a user) the batch pairs of a
symmetric ``x2=None`` computation may be *packed*: the samples are cut into
``B`` blocks of ``b`` and ``nngp`` holds only the upper-triangle block pairs,
shape ``(B (B + 1) / 2, b, b) + S`` (see `widenets.stax.covariance`).
``packed`` records that; layers see it only through ``batch_ndim`` (3).
Likewise a whole network may run on row blocks of ``x1`` (see
`widenets.stax.chunking`): ``row_offset`` is then the traced index in ``x1``
of the block's first row, so that the batch diagonal ``i == j`` sits at
``j == i + row_offset`` (see `widenets.stax.covariance.batch_diagonal_mask`).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._reduce import nan_max

__all__ = ["Kernel", "field", "pytree_dataclass", "get_from", "check_get",
           "canonical_get", "namedtuple_type", "GET_FIELDS", "same_inputs"]


def field(pytree_node: bool = True, **kwargs):
  """A dataclass field; ``pytree_node=False`` makes it static metadata."""
  return dataclasses.field(metadata={"pytree_node": pytree_node}, **kwargs)


def pytree_dataclass(cls):
  """Frozen dataclass registered as a pytree (static fields are aux data)."""
  cls = dataclasses.dataclass(frozen=True)(cls)
  data, meta = [], []
  for f in dataclasses.fields(cls):
    (data if f.metadata.get("pytree_node", True) else meta).append(f.name)

  def flatten(x):
    return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in meta)

  def flatten_with_keys(x):
    return ([(jax.tree_util.GetAttrKey(n), getattr(x, n)) for n in data],
            tuple(getattr(x, n) for n in meta))

  def unflatten(aux, children):
    return cls(**dict(zip(meta, aux)), **dict(zip(data, children)))

  jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten,
                                          flatten)
  cls.replace = lambda self, **kw: dataclasses.replace(self, **kw)
  cls.asdict = lambda self: {f.name: getattr(self, f.name)
                             for f in dataclasses.fields(self)}
  cls.astuple = lambda self: tuple(getattr(self, f.name)
                                   for f in dataclasses.fields(self))
  return cls


@pytree_dataclass
class Kernel:
  """Covariances of a layer's outputs over two batches of inputs.

  Attributes (as in neural-tangents):
    nngp: ``(N1, N2) + S`` NNGP covariance of the layer's outputs.
    ntk: NTK, same shape as ``nngp`` (or ``None`` when not computed).
    cov1: covariance of the first batch with itself.
    cov2: covariance of the second batch with itself (``None``: same as cov1).
    x1_is_x2: whether the two batches are the same inputs.
    is_gaussian: outputs are i.i.d. Gaussian over channels given the inputs
      (true right after an affine layer); activations require it.
    is_reversed: spatial axes are stored in reverse order (kept for
      compatibility; widenets layers keep the natural order).
    is_input: the kernel describes the raw inputs.
    diagonal_batch: ``cov1``/``cov2`` hold only the sample diagonal.
    diagonal_spatial: covariances hold only spatial diagonals.
    shape1, shape2: shapes of the (finite) layer outputs for each batch.
    batch_axis, channel_axis: axes of those outputs.
    mask1, mask2: boolean masks (True = masked) broadcastable to shape1/2.
    packed: internal; batch pairs packed as upper-triangle blocks (see module).
    row_offset: internal; ``x1``'s row of ``nngp[0]`` in a row block (see
      module), else ``None``.
  """

  nngp: Any
  ntk: Any
  cov1: Any
  cov2: Any
  x1_is_x2: Any
  is_gaussian: bool = field(False)
  is_reversed: bool = field(False)
  is_input: bool = field(False)
  diagonal_batch: bool = field(False)
  diagonal_spatial: bool = field(False)
  shape1: Optional[tuple] = field(False)
  shape2: Optional[tuple] = field(False)
  batch_axis: int = field(False)
  channel_axis: int = field(False)
  mask1: Any = None
  mask2: Any = None
  packed: bool = field(False, default=False)
  row_offset: Any = None

  replace = ...  # type: Callable[..., Kernel]
  asdict = ...  # type: Callable[[], dict]
  astuple = ...  # type: Callable[[], tuple]

  # Scalar arithmetic: `a * k` is the kernel of `a * f(x)`, `k + c` that of
  # `f(x) + c` for zero-mean `f` (as in neural-tangents).
  def __mul__(self, other: float) -> "Kernel":
    var = other**2
    return self.replace(
        nngp=var * self.nngp, cov1=var * self.cov1,
        cov2=None if self.cov2 is None else var * self.cov2,
        ntk=None if self.ntk is None else var * self.ntk)

  __rmul__ = __mul__

  def __add__(self, other: float) -> "Kernel":
    var = other**2
    return self.replace(
        nngp=var + self.nngp, cov1=var + self.cov1,
        cov2=None if self.cov2 is None else var + self.cov2)

  __sub__ = __add__

  def __truediv__(self, other: float) -> "Kernel":
    return self.__mul__(1.0 / other)

  def __neg__(self) -> "Kernel":
    return self

  __pos__ = __neg__

  @property
  def batch_ndim(self) -> int:
    """Leading batch axes of ``nngp``: 2, or 3 when packed."""
    return 3 if self.packed else 2

  @property
  def cov_batch_ndim(self) -> int:
    """Leading batch axes of ``cov1``/``cov2``."""
    return 1 if self.diagonal_batch else 2

  def slice(self, n1_slice: slice, n2_slice: slice) -> "Kernel":
    """The kernel of ``x1[n1_slice]`` vs ``x2[n2_slice]``."""
    if self.packed:
      raise ValueError("Kernel.slice: cannot slice a packed kernel.")
    cov1 = self.cov1[n1_slice]
    cov2 = self.cov1[n2_slice] if self.cov2 is None else self.cov2[n2_slice]
    if not self.diagonal_batch:
      cov1, cov2 = cov1[:, n1_slice], cov2[:, n2_slice]
    ntk = self.ntk
    if ntk is not None and jnp.ndim(ntk) > 0:
      ntk = ntk[n1_slice, n2_slice]
    return self.replace(
        cov1=cov1, cov2=cov2, nngp=self.nngp[n1_slice, n2_slice], ntk=ntk,
        shape1=(cov1.shape[0],) + tuple(self.shape1[1:]),
        shape2=(cov2.shape[0],) + tuple(self.shape2[1:]),
        mask1=None if self.mask1 is None else self.mask1[n1_slice],
        mask2=None if self.mask2 is None else self.mask2[n2_slice])

  def transpose(self, axes: Optional[Sequence[int]] = None) -> "Kernel":
    """Permutes the spatial axes of all covariances (batch axes stay first).

    ``axes`` permutes the spatial axes only; ``None`` keeps their order (as in
    neural-tangents, unlike `numpy.transpose`).
    """
    n_spatial = len(self.shape1) - 2
    axes = tuple(range(n_spatial)) if axes is None else tuple(axes)

    def permute(mat, batch_ndim):
      if mat is None or jnp.ndim(mat) == 0:
        return mat
      if self.diagonal_spatial:
        perm = [batch_ndim + a for a in axes]
      else:
        perm = [batch_ndim + 2 * a + i for a in axes for i in (0, 1)]
      return jnp.transpose(mat, tuple(range(batch_ndim)) + tuple(perm))

    return self.replace(
        cov1=permute(self.cov1, self.cov_batch_ndim),
        cov2=permute(self.cov2, self.cov_batch_ndim),
        nngp=permute(self.nngp, self.batch_ndim),
        ntk=permute(self.ntk, self.batch_ndim))

  def reverse(self) -> "Kernel":
    """The spatial axes in reverse order, with ``is_reversed`` toggled.

    widenets keeps spatial axes in natural order. neural-tangents 0.6.5
    returns them reversed (``is_reversed=True``) after an odd number of
    convolutions when no readout removes them: ``nt_kernel.reverse()`` is
    widenets' kernel and ``kernel.reverse()`` neural-tangents' layout.
    """
    n_spatial = len(self.shape1) - 2
    return self.transpose(tuple(range(n_spatial))[::-1]).replace(
        is_reversed=not self.is_reversed)


# The array-valued (pytree child) fields of a Kernel.
ARRAY_FIELDS = ("nngp", "ntk", "cov1", "cov2", "x1_is_x2", "mask1", "mask2")

# Layout fields of a computation in progress, never in a user's Kernel.
INTERNAL_FIELDS = ("packed", "row_offset")

# The names `get` may ask for: every public Kernel field.
GET_FIELDS = tuple(f.name for f in dataclasses.fields(Kernel)
                   if f.name not in INTERNAL_FIELDS)


@functools.lru_cache(maxsize=None)
def namedtuple_type(name: str, fields: tuple) -> type:
  """The namedtuple class ``name`` with ``fields``: one class per pair, so
  results asked for the same way have the same type (and treedef)."""
  return collections.namedtuple(name, fields)



def canonical_get(get, allowed: Sequence[str] = GET_FIELDS, *,
                  default: Optional[tuple] = None,
                  none_means: str = "the whole Kernel",
                  ignore_case: bool = False, nonempty: bool = False
                  ) -> tuple[Optional[tuple], bool]:
  """``(names, single)`` of a ``get`` argument.

  ``get`` is a name (``single``: the caller returns that value alone), a
  tuple/list of names (a namedtuple with those fields, in that order) or
  ``None`` (``default``; ``none_means`` says what that is in errors).
  Names must be in ``allowed`` and unique; ``ignore_case`` lowercases them
  first, ``nonempty`` rejects ``()``.
  """
  if get is None:
    return default, False
  if isinstance(get, str):
    names, single = (get,), True
  elif isinstance(get, (tuple, list)):
    names, single = tuple(get), False
  else:
    raise TypeError(f"`get` must be a string, a tuple of strings or None; got "
                    f"{type(get).__name__}.")
  if nonempty and not names:
    raise ValueError("`get` must be non-empty.")
  if ignore_case:
    names = tuple(str(g).lower() for g in names)
  for name in names:
    if name not in allowed:
      raise ValueError(
          f"Unknown `get` {name!r}: expected one of "
          f"{', '.join(map(repr, allowed))} (or a tuple of them, or None for "
          f"{none_means}).")
  if len(set(names)) < len(names):
    raise ValueError(f"All entries of `get` must be unique; got {names}.")
  return names, single


def get_from(obj, get, name: str = "AnalyticKernel"):
  """Picks ``get`` from a `Kernel` (or namedtuple/dict of arrays, or a list or
  tuple of those, giving the same structure).

  ``get`` is a field name (returns that value), a tuple of names (returns a
  namedtuple ``name`` with those fields, in that order) or ``None`` (returns
  ``obj`` itself).
  """
  names, single = canonical_get(get)
  if names is None:
    return obj
  if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
    # Several outputs (``parallel``): the same structure, each picked.
    return type(obj)(get_from(o, get, name) for o in obj)
  pick = ((lambda n: obj[n]) if isinstance(obj, dict)
          else (lambda n: getattr(obj, n)))
  if single:
    return pick(names[0])
  return namedtuple_type(name, names)(*[pick(n) for n in names])


def check_get(get) -> Optional[tuple]:
  """Validates ``get`` and returns it as a tuple of names (None stays None)."""
  return canonical_get(get)[0]


# Inputs closer than this are the same inputs (as neural-tangents' x1_is_x2).
SAME_INPUTS_TOL = 1e-12


def same_inputs(x1, x2):
  """Whether ``x2`` is the same inputs as ``x1`` (`Kernel.x1_is_x2`).

  ``x2=None`` means ``x1``. Otherwise the trees, and the shapes of their
  leaves, must match, inexact leaves within `SAME_INPUTS_TOL` of each other
  and other leaves (integers, PRNG keys) exactly. Returns a boolean scalar:
  NumPy when every leaf is a NumPy array (computed on the host, so large
  host inputs are not copied to a device), else a JAX array (traced inside
  `jit`).
  """
  if x2 is None:
    return np.bool_(True)
  l1, t1 = jax.tree_util.tree_flatten(x1)
  l2, t2 = jax.tree_util.tree_flatten(x2)
  if t1 != t2 or any(np.shape(a) != np.shape(b) for a, b in zip(l1, l2)):
    return np.bool_(False)
  xp = np if all(isinstance(a, np.ndarray) for a in l1 + l2) else jnp
  # Traced: `nan_max` (one XLA kernel; a one-operand reduction of more than
  # 32 entries is two, a boolean all-reduction three, and a large
  # one-operand max-reduction skips NaN: see `widenets._reduce`).
  same = [(xp.all(xp.abs(a - b) < SAME_INPUTS_TOL) if xp is np
           else nan_max(jnp.abs(a - b), initial=0) < SAME_INPUTS_TOL)
          if xp.issubdtype(xp.result_type(a, b), xp.inexact)
          else xp.all(a == b) for a, b in zip(l1, l2)]
  return xp.all(xp.asarray(same)) if same else np.bool_(True)
