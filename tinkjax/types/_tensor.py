"""``TensorData``: a dense or CSR-sparse float32/int64 tensor, NumPy-backed.

On the JSON wire it is ``{data: [num], dtype, shape?, sparse_crow_indices?, sparse_col_indices?}``;
in protobuf it is a ``Tensor`` of raw little-endian buffers. Either way the values live in one
NumPy array (``data``), so nothing goes through Python lists on the hot path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from tinkjax.errors import TensorError

from ._base import Wire

if TYPE_CHECKING:
    import jax
    import torch

__all__ = ["TensorData", "TensorDtype", "numpy_dtype"]

TensorDtype = Literal["int64", "float32"]

_NP_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "int64": np.dtype("<i8"),
}


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    """The little-endian NumPy dtype of a wire dtype name."""
    try:
        return _NP_DTYPES[dtype]
    except KeyError:
        raise TensorError(
            f"unsupported dtype {dtype!r}; expected 'float32' or 'int64'", field="dtype"
        ) from None


def _wire_dtype_of(array: npt.NDArray[Any]) -> TensorDtype:
    kind = array.dtype.kind
    if kind == "f":
        return "float32"
    if kind in "iub":
        return "int64"
    raise TensorError(f"unsupported array dtype {array.dtype}; expected a float or integer array")


class TensorData(Wire, frozen=True, kw_only=True, eq=False):
    """A tensor on the wire.

    Attributes:
        data: the values, a read-only NumPy array of ``dtype`` (the official SDK exposes a flat
            list here; ``tolist()`` gives one). For a dense tensor it has the tensor's shape; for
            a CSR tensor it holds the ``nnz`` stored values.
        dtype: ``"float32"`` or ``"int64"``.
        shape: the (dense) shape; ``None`` means 1-D.
        sparse_crow_indices: CSR row pointers (``rows + 1`` entries); ``None`` for dense.
        sparse_col_indices: CSR column indices (``nnz`` entries); ``None`` for dense.
    """

    data: Any
    dtype: TensorDtype
    shape: list[int] | None = None
    sparse_crow_indices: list[int] | None = None
    sparse_col_indices: list[int] | None = None

    def __post_init__(self) -> None:
        np_dtype = numpy_dtype(self.dtype)  # raises naming a bad dtype
        raw = self.data
        if type(raw) is np.ndarray and raw.dtype == np_dtype:
            arr = raw  # the codec's path: already the right dtype, no copy
        else:
            arr = self._convert(raw, np_dtype)
        sparse = self.sparse_crow_indices is not None or self.sparse_col_indices is not None
        arr = self._check_sparse(arr) if sparse else self._check_dense(arr)
        if arr.flags.writeable:
            if arr is raw or arr.base is raw:
                arr = arr.copy()
            arr.flags.writeable = False
        msgspec.structs.force_setattr(self, "data", arr)

    def _convert(self, raw: Any, np_dtype: np.dtype[Any]) -> npt.NDArray[Any]:
        try:
            src = np.asarray(raw if raw is not None else ())
            if src.dtype.kind not in "fiub":
                raise TypeError(f"got values of type {src.dtype}")
            arr = src.astype(np_dtype, copy=False)
        except (TypeError, ValueError) as exc:
            raise TensorError(
                f"values do not convert to {self.dtype}: {exc}", field="data"
            ) from None
        if self.dtype == "int64" and src.dtype.kind == "f" and not np.array_equal(arr, src):
            raise TensorError("int64 tensor given non-integer values", field="data")
        return arr

    def _check_dense(self, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
        if self.shape is None:
            if arr.ndim > 1:
                msgspec.structs.force_setattr(self, "shape", list(arr.shape))
                return arr
            return arr if arr.ndim == 1 else arr.reshape(-1)
        shape = self.shape
        if len(shape) == 1 and arr.ndim == 1 and shape[0] == arr.size:
            return arr
        if any(d < 0 for d in shape):
            raise TensorError(f"negative dimension in shape {shape}", field="shape")
        if math.prod(shape) != arr.size:
            raise TensorError(
                f"shape {shape} needs {math.prod(shape)} values but data has {arr.size}",
                field="shape",
            )
        return arr.reshape(shape)

    def _check_sparse(self, arr: npt.NDArray[Any]) -> npt.NDArray[Any]:
        crow, col = self.sparse_crow_indices, self.sparse_col_indices
        if crow is None or col is None:
            raise TensorError(
                "sparse_crow_indices and sparse_col_indices must be set together",
                field="sparse_col_indices" if col is None else "sparse_crow_indices",
            )
        if self.shape is None or len(self.shape) != 2:
            raise TensorError(f"a CSR tensor needs a 2-D shape, got {self.shape!r}", field="shape")
        rows, cols = self.shape
        arr = arr.reshape(-1)
        crow_a = np.asarray(crow, dtype=np.int64)
        col_a = np.asarray(col, dtype=np.int64)
        if crow_a.shape != (rows + 1,):
            raise TensorError(
                f"needs {rows + 1} row pointers for {rows} rows, got {crow_a.size}",
                field="sparse_crow_indices",
            )
        if crow_a[0] != 0 or np.any(np.diff(crow_a) < 0) or crow_a[-1] != arr.size:
            raise TensorError(
                f"row pointers must start at 0, not decrease and end at nnz={arr.size}",
                field="sparse_crow_indices",
            )
        if col_a.shape != (arr.size,):
            raise TensorError(
                f"needs {arr.size} column indices (one per value), got {col_a.size}",
                field="sparse_col_indices",
            )
        if col_a.size and (col_a.min() < 0 or col_a.max() >= cols):
            raise TensorError(f"column index out of range [0, {cols})", field="sparse_col_indices")
        return arr

    # -- identity -------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorData):
            return NotImplemented
        return (
            self.dtype == other.dtype
            and self.shape == other.shape
            and self.sparse_crow_indices == other.sparse_crow_indices
            and self.sparse_col_indices == other.sparse_col_indices
            and self.data.shape == other.data.shape
            and bool(np.array_equal(self.data, other.data, equal_nan=self.dtype == "float32"))
        )

    __hash__ = None  # type: ignore[assignment]

    # -- views ----------------------------------------------------------------------------
    @property
    def is_sparse(self) -> bool:
        """Whether the tensor is stored in CSR form."""
        return self.sparse_crow_indices is not None

    @property
    def dense_shape(self) -> tuple[int, ...]:
        """The shape of the dense tensor."""
        if self.shape is None:
            return (int(self.data.size),)
        return tuple(int(d) for d in self.shape)

    def to_numpy(self, pad_value: int = 0) -> npt.NDArray[Any]:
        """The dense tensor as a NumPy array (CSR gaps filled with ``pad_value``)."""
        if not self.is_sparse:
            return self.data  # type: ignore[no-any-return]
        if isinstance(pad_value, bool) or not isinstance(pad_value, int | np.integer):
            raise TypeError(f"pad_value must be an integer, got {pad_value!r}")
        rows, cols = self.dense_shape
        out = np.full((rows, cols), pad_value, dtype=self.data.dtype)
        crow = np.asarray(self.sparse_crow_indices, dtype=np.int64)
        row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(crow))
        out[row_of, np.asarray(self.sparse_col_indices, dtype=np.int64)] = self.data
        return out

    def to_jax(self, pad_value: int = 0) -> jax.Array:
        """The dense tensor as a JAX array."""
        import jax.numpy as jnp

        return jnp.asarray(self.to_numpy(pad_value))

    def to_torch(self, pad_value: int = 0) -> torch.Tensor:
        """The dense tensor as a ``torch.Tensor`` (``float32`` or ``int64``; CSR gaps filled
        with ``pad_value``). torch is optional: it is imported here, on the first call.

        Raises:
            ImportError: torch is not installed.
        """
        import torch

        return torch.from_numpy(np.array(self.to_numpy(pad_value)))  # a writable copy

    def tolist(self, pad_value: int = 0) -> list[Any]:
        """The dense tensor as nested Python lists."""
        return list(self.to_numpy(pad_value).tolist())

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def from_numpy(cls, array: npt.ArrayLike) -> TensorData:
        """A dense tensor from a NumPy array (floats → float32, integers → int64)."""
        arr = np.asarray(array)
        dtype = _wire_dtype_of(arr)
        return cls(
            data=arr.astype(_NP_DTYPES[dtype], copy=False), dtype=dtype, shape=list(arr.shape)
        )

    @classmethod
    def from_jax(cls, array: Any) -> TensorData:
        """A dense tensor from a JAX array (bfloat16/float16/float64 → float32)."""
        arr = np.asarray(array)
        if arr.dtype.kind == "V" or str(arr.dtype) == "bfloat16":
            arr = arr.astype(np.float32)
        return cls.from_numpy(arr)

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        """A dense tensor from a ``torch.Tensor`` (floats → float32, integers → int64; a
        tensor that requires grad is detached, one on an accelerator copied to the host)."""
        import torch

        t = tensor.detach().cpu()
        if t.dtype.is_floating_point and t.dtype != torch.float64:
            t = t.to(torch.float32)  # bfloat16/float16 have no NumPy twin NumPy reads as-is
        return cls.from_numpy(t.contiguous().numpy())

    @classmethod
    def from_numpy_sparse(cls, array: npt.ArrayLike, pad_value: int = 0) -> TensorData:
        """A CSR tensor from a dense 2-D array, when CSR is smaller; otherwise dense.

        Entries equal to ``pad_value`` are left out. CSR is used only when
        ``(rows + 1) + 2 * nnz < rows * cols``, the official SDK's rule.
        """
        arr = np.asarray(array)
        if arr.ndim != 2:
            return cls.from_numpy(arr)
        dtype = _wire_dtype_of(arr)
        arr = arr.astype(_NP_DTYPES[dtype], copy=False)
        keep = arr != pad_value
        nnz = int(keep.sum())
        rows, cols = arr.shape
        if (rows + 1) + 2 * nnz >= rows * cols:
            return cls.from_numpy(arr)
        r_idx, c_idx = np.nonzero(keep)
        crow = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r_idx, minlength=rows), out=crow[1:])
        return cls(
            data=arr[r_idx, c_idx],
            dtype=dtype,
            shape=[rows, cols],
            sparse_crow_indices=crow.tolist(),
            sparse_col_indices=c_idx.astype(np.int64).tolist(),
        )
