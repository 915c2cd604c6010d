"""The allow-list of a server-side custom loss: each torch operation it may name, in JAX.

A traced loss (``create_custom_loss``) names its operations as strings: functions by their
qualified name (``torch.exp``, ``operator.mul``, ``torch._C._nn.log_sigmoid``), methods by their
name (``sum``, ``detach``). :data:`FUNCTIONS` and :data:`METHODS` are the only names a graph may
use; each maps to a JAX function with torch's argument names and semantics (``dim``/``keepdim``,
``clamp(min=, max=)``, ``detach`` as ``stop_gradient``). Nothing else is callable: a name that
is not a key here is refused when the graph is parsed.

Operands are JAX arrays (the datum's tensors and what is computed from them) and Python scalars
and tuples (shapes, constants); Python-only arithmetic is guarded so that a constant cannot make
the server build a huge integer or sequence.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["DTYPES", "FUNCTIONS", "GETATTR_NAMES", "METHODS", "OpFn"]

OpFn = Callable[..., Any]
_MAX_INT = 2**62
_MAX_ARANGE = 1 << 22


def _is_array(x: object) -> bool:
    return isinstance(x, jax.Array)


def _scalar(x: object) -> bool:
    return isinstance(x, bool | int | float)


def _arith(op: Callable[[Any, Any], Any]) -> OpFn:
    """A binary operator on arrays and numbers (never on sequences or strings: ``shape * n``
    would build a sequence of any size)."""

    def apply(a: Any, b: Any) -> Any:
        if not ((_is_array(a) or _scalar(a)) and (_is_array(b) or _scalar(b))):
            raise TypeError(
                f"operands must be tensors or numbers, got {type(a).__name__} and "
                f"{type(b).__name__}"
            )
        out = op(a, b)
        if isinstance(out, int) and abs(out) > _MAX_INT:
            raise ValueError(f"integer result {a!r} and {b!r} is out of range")
        return out

    return apply


def _pow(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and not (0 <= b <= 64 and abs(a) < 2**32):
        raise ValueError(f"integer power {a} ** {b} is out of range")
    return _arith(operator.pow)(a, b)


def _unary(fn: Callable[[Any], Any]) -> OpFn:
    def apply(x: Any) -> Any:
        if not (_is_array(x) or _scalar(x)):
            raise TypeError(f"operand must be a tensor or a number, got {type(x).__name__}")
        return fn(x)

    return apply


def _array(x: Any) -> jax.Array:
    if not (_is_array(x) or _scalar(x)):
        raise TypeError(f"expected a tensor or a number, got {type(x).__name__}")
    return jnp.asarray(x)


def _axis(dim: Any) -> int | tuple[int, ...] | None:
    if dim is None or isinstance(dim, int):
        return dim
    if isinstance(dim, tuple | list) and all(isinstance(d, int) for d in dim):
        return tuple(dim)
    raise TypeError(f"dim must be an int or a tuple of ints, got {dim!r}")


def _check_axis(x: jax.Array, dim: Any) -> int | tuple[int, ...] | None:
    axis = _axis(dim)
    for a in (axis,) if isinstance(axis, int) else (axis or ()):
        if not -max(x.ndim, 1) <= a < max(x.ndim, 1):
            raise IndexError(f"dim {a} is out of range for a tensor of rank {x.ndim}")
    if x.ndim == 0 and axis is not None:
        return None  # torch accepts dim 0 / -1 on a scalar
    return axis


def _reduction(fn: Callable[..., jax.Array]) -> OpFn:
    def apply(x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> jax.Array:
        arr = _array(x)
        out = fn(arr, axis=_check_axis(arr, dim), keepdims=bool(keepdim))
        return out if dtype is None else out.astype(dtype)

    return apply


def _extremum(fn: Callable[..., jax.Array], pair: Callable[[Any, Any], jax.Array]) -> OpFn:
    """``torch.max``/``min``: of everything (``x.max()``) or of two tensors; ``dim=`` (which
    also returns indices) is not offered: use ``amax``/``amin``."""

    def apply(x: Any, other: Any = None) -> jax.Array:
        if other is None:
            return fn(_array(x))
        if isinstance(other, int) and not isinstance(other, bool) and _is_array(x):
            raise TypeError("max/min over a dim returns indices too; use amax/amin(x, dim)")
        return pair(_array(x), _array(other))

    return apply


def _clamp(x: Any, min: Any = None, max: Any = None) -> jax.Array:
    arr = _array(x)
    if min is None and max is None:
        raise ValueError("clamp needs min or max")
    if min is not None:
        arr = jnp.maximum(arr, min)
    if max is not None:
        arr = jnp.minimum(arr, max)
    return arr


def _softmax(fn: Callable[..., jax.Array]) -> OpFn:
    def apply(x: Any, dim: Any = None, *, dtype: Any = None, _stacklevel: int = 3) -> jax.Array:
        if not isinstance(dim, int):
            raise TypeError(f"softmax needs an integer dim, got {dim!r}")
        arr = _array(x) if dtype is None else _array(x).astype(dtype)
        return fn(arr, axis=_check_axis(arr, dim))

    return apply


def _logsumexp(x: Any, dim: Any, keepdim: bool = False) -> jax.Array:
    arr = _array(x)
    return jax.nn.logsumexp(arr, axis=_check_axis(arr, dim), keepdims=bool(keepdim))


def _cumsum(x: Any, dim: Any, *, dtype: Any = None) -> jax.Array:
    arr = _array(x)
    if not isinstance(dim, int):
        raise TypeError(f"cumsum needs an integer dim, got {dim!r}")
    axis = _check_axis(arr, dim)
    out = jnp.cumsum(arr, axis=axis if isinstance(axis, int) else None)
    return out if dtype is None else out.astype(dtype)


def _shape_arg(args: Sequence[Any]) -> tuple[int, ...]:
    """``reshape(2, 3)`` or ``reshape((2, 3))``."""
    shape = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"a shape must be integers, got {tuple(shape)!r}")
    return tuple(shape)


def _reshape_method(x: Any, *shape: Any) -> jax.Array:
    return jnp.reshape(_array(x), _shape_arg(shape))


def _reshape_fn(x: Any, shape: Any) -> jax.Array:
    return jnp.reshape(_array(x), _shape_arg((shape,)))


def _flatten(x: Any, start_dim: int = 0, end_dim: int = -1) -> jax.Array:
    arr = _array(x)
    if arr.ndim == 0:
        return arr.reshape(1)
    start, end = start_dim % arr.ndim, end_dim % arr.ndim
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} is after end_dim {end_dim}")
    merged = math.prod(arr.shape[start : end + 1])
    return arr.reshape(*arr.shape[:start], merged, *arr.shape[end + 1 :])


def _squeeze(x: Any, dim: Any = None) -> jax.Array:
    arr = _array(x)
    if dim is None:
        return jnp.squeeze(arr)
    axis = _check_axis(arr, dim)
    axes = (axis,) if isinstance(axis, int) else (axis or ())
    keep = tuple(a % arr.ndim for a in axes if arr.shape[a] == 1)  # torch ignores size != 1
    return jnp.squeeze(arr, axis=keep) if keep else arr


def _unsqueeze(x: Any, dim: int) -> jax.Array:
    arr = _array(x)
    if not isinstance(dim, int) or not -arr.ndim - 1 <= dim <= arr.ndim:
        raise IndexError(f"unsqueeze: dim {dim!r} out of range for rank {arr.ndim}")
    return jnp.expand_dims(arr, dim)


def _size(x: Any, dim: Any = None) -> Any:
    arr = _array(x)
    if dim is None:
        return tuple(arr.shape)
    axis = _check_axis(arr, dim)
    if not isinstance(axis, int):
        raise TypeError(f"size: dim must be an int, got {dim!r}")
    return arr.shape[axis]


def _transpose(x: Any, dim0: int, dim1: int) -> jax.Array:
    arr = _array(x)
    _check_axis(arr, (dim0, dim1))
    return jnp.swapaxes(arr, dim0, dim1)


def _t(x: Any) -> jax.Array:
    arr = _array(x)
    if arr.ndim > 2:
        raise ValueError(f"t() expects a tensor of rank <= 2, got rank {arr.ndim}")
    return arr.T


def _sequence(tensors: Any) -> list[jax.Array]:
    if not isinstance(tensors, tuple | list) or not tensors:
        raise TypeError("expected a non-empty list of tensors")
    return [_array(t) for t in tensors]


def _stack(tensors: Any, dim: int = 0) -> jax.Array:
    return jnp.stack(_sequence(tensors), axis=dim)


def _cat(tensors: Any, dim: int = 0) -> jax.Array:
    return jnp.concatenate(_sequence(tensors), axis=dim)


def _where(condition: Any, x: Any, y: Any) -> jax.Array:
    return jnp.where(_array(condition), x, y)


def _masked_fill(x: Any, mask: Any, value: Any) -> jax.Array:
    arr = _array(x)
    return jnp.where(_array(mask), jnp.asarray(value, arr.dtype), arr)


def _like(fill: float) -> OpFn:
    def apply(x: Any, *, dtype: Any = None, **_ignored_layout: Any) -> jax.Array:
        arr = _array(x)
        return jnp.full(arr.shape, fill, dtype or arr.dtype)

    return apply


def _full_like(x: Any, fill_value: Any, *, dtype: Any = None, **_ignored: Any) -> jax.Array:
    arr = _array(x)
    return jnp.full(arr.shape, fill_value, dtype or arr.dtype)


def _new_filled(fill: float) -> OpFn:
    def apply(*size: Any, dtype: Any = None, **_ignored_layout: Any) -> jax.Array:
        return jnp.full(_shape_arg(size), fill, dtype or jnp.float32)

    return apply


def _arange(*args: Any, dtype: Any = None, **_ignored_layout: Any) -> jax.Array:
    if not 1 <= len(args) <= 3 or not all(_scalar(a) for a in args):
        raise TypeError(f"arange takes 1 to 3 numbers, got {args!r}")
    start, stop, step = (
        (0, args[0], 1) if len(args) == 1 else (*args[:2], args[2] if len(args) == 3 else 1)
    )
    if step == 0 or not all(math.isfinite(float(v)) for v in (start, stop, step)):
        raise ValueError(f"arange{args!r}: bad range")
    if math.ceil((stop - start) / step) > _MAX_ARANGE:  # numpy would build it on the host
        raise ValueError(f"arange{args!r} has more than {_MAX_ARANGE} elements")
    return jnp.arange(start, stop, step, dtype=dtype)


def _to(x: Any, *args: Any, dtype: Any = None, **_ignored_device: Any) -> jax.Array:
    """``x.to(dtype)`` / ``x.to(device)``: only the dtype matters here."""
    arr = _array(x)
    for a in args:
        if isinstance(a, jnp.dtype):
            dtype = a
        elif _is_array(a):
            dtype = a.dtype  # x.to(other): other's dtype
    return arr if dtype is None else arr.astype(dtype)


def _cast(dtype: Any) -> OpFn:
    def apply(x: Any, *_ignored: Any, **_ignored_kw: Any) -> jax.Array:
        return _array(x).astype(dtype)

    return apply


def _type_as(x: Any, other: Any) -> jax.Array:
    return _array(x).astype(_array(other).dtype)


def _getitem(x: Any, index: Any) -> Any:
    if isinstance(x, tuple):  # a shape
        if not isinstance(index, int | slice):
            raise TypeError(f"a shape is indexed by an int or a slice, got {index!r}")
        return x[index]
    arr = _array(x)
    parts = index if isinstance(index, tuple) else (index,)
    dim = 0
    for part in parts:
        if isinstance(part, bool) or part is None:
            continue
        if isinstance(part, int):
            if dim >= arr.ndim or not -arr.shape[dim] <= part < arr.shape[dim]:
                raise IndexError(f"index {part} is out of range for shape {tuple(arr.shape)}")
            dim += 1
        elif part is Ellipsis:
            dim = arr.ndim - sum(
                1 for p in parts[parts.index(part) + 1 :] if p is not None and p is not Ellipsis
            )
        elif isinstance(part, slice) or _is_array(part):
            dim += 1
        else:
            raise TypeError(f"cannot index a tensor with {type(part).__name__}")
    return arr[index]


def _gather(x: Any, dim: int, index: Any) -> jax.Array:
    arr, idx = _array(x), _array(index)
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        idx = idx.astype(jnp.int32)
    _check_axis(arr, dim)
    return jnp.take_along_axis(arr, idx, axis=dim)


def _math_unary(fn: Callable[[float], float]) -> OpFn:
    def apply(x: Any) -> float:
        if not _scalar(x):
            raise TypeError(f"math functions take numbers, got {type(x).__name__}")
        return fn(x)

    return apply


def _logsigmoid(x: Any) -> jax.Array:
    return jax.nn.log_sigmoid(_array(x))


def _softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> jax.Array:
    arr = _array(x) * beta
    return jnp.where(arr > threshold, arr, jax.nn.softplus(arr)) / beta


def _relu(x: Any, inplace: bool = False) -> jax.Array:
    return jax.nn.relu(_array(x))


def _dot(a: Any, b: Any) -> jax.Array:
    return jnp.dot(_array(a), _array(b))


def _detach(x: Any) -> Any:
    return jax.lax.stop_gradient(x) if _is_array(x) else x


def _identity(x: Any, *_args: Any, **_kwargs: Any) -> Any:
    return _array(x)


def _dim(x: Any) -> int:
    return _array(x).ndim


def _numel(x: Any) -> int:
    return int(_array(x).size)


_UNARY: dict[str, Callable[[Any], Any]] = {
    "exp": jnp.exp,
    "log": jnp.log,
    "log1p": jnp.log1p,
    "expm1": jnp.expm1,
    "log2": jnp.log2,
    "log10": jnp.log10,
    "exp2": jnp.exp2,
    "sqrt": jnp.sqrt,
    "rsqrt": jax.lax.rsqrt,
    "abs": jnp.abs,
    "neg": jnp.negative,
    "negative": jnp.negative,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "sin": jnp.sin,
    "cos": jnp.cos,
    "sign": jnp.sign,
    "square": jnp.square,
    "reciprocal": jnp.reciprocal,
    "floor": jnp.floor,
    "ceil": jnp.ceil,
    "logical_not": jnp.logical_not,
    "isfinite": jnp.isfinite,
}
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": jnp.add,
    "sub": jnp.subtract,
    "subtract": jnp.subtract,
    "mul": jnp.multiply,
    "multiply": jnp.multiply,
    "div": jnp.true_divide,
    "divide": jnp.true_divide,
    "true_divide": jnp.true_divide,
    "pow": jnp.power,
    "maximum": jnp.maximum,
    "minimum": jnp.minimum,
    "logaddexp": jnp.logaddexp,
    "eq": jnp.equal,
    "ne": jnp.not_equal,
    "lt": jnp.less,
    "le": jnp.less_equal,
    "gt": jnp.greater,
    "ge": jnp.greater_equal,
    "logical_and": jnp.logical_and,
    "logical_or": jnp.logical_or,
}
_REDUCTIONS: dict[str, Callable[..., jax.Array]] = {
    "sum": jnp.sum,
    "mean": jnp.mean,
    "prod": jnp.prod,
    "amax": jnp.max,
    "amin": jnp.min,
}
_SHARED: dict[str, OpFn] = {
    **{name: _unary(fn) for name, fn in _UNARY.items()},
    **{name: _arith(fn) for name, fn in _BINARY.items()},
    **{name: _reduction(fn) for name, fn in _REDUCTIONS.items()},
    "max": _extremum(jnp.max, jnp.maximum),
    "min": _extremum(jnp.min, jnp.minimum),
    "clamp": _clamp,
    "clip": _clamp,
    "clamp_min": lambda x, min: _clamp(x, min=min),
    "clamp_max": lambda x, max: _clamp(x, max=max),
    "logsumexp": _logsumexp,
    "softmax": _softmax(jax.nn.softmax),
    "log_softmax": _softmax(jax.nn.log_softmax),
    "cumsum": _cumsum,
    "relu": _relu,
    "where": _where,
    "masked_fill": _masked_fill,
    "flatten": _flatten,
    "squeeze": _squeeze,
    "unsqueeze": _unsqueeze,
    "transpose": _transpose,
    "t": _t,
    "gather": _gather,
    "dot": _dot,
    "matmul": lambda a, b: jnp.matmul(_array(a), _array(b)),
    "detach": _detach,
    "clone": _identity,
}

#: ``call_function`` targets (qualified names, as the SDK sends them) -> JAX.
FUNCTIONS: MappingProxyType[str, OpFn] = MappingProxyType(
    {
        **{f"torch.{name}": fn for name, fn in _SHARED.items() if name != "clone"},
        "torch.clone": _identity,
        "torch.reshape": _reshape_fn,
        "torch.stack": _stack,
        "torch.cat": _cat,
        "torch.concat": _cat,
        "torch.zeros_like": _like(0.0),
        "torch.ones_like": _like(1.0),
        "torch.full_like": _full_like,
        "torch.zeros": _new_filled(0.0),
        "torch.ones": _new_filled(1.0),
        "torch.arange": _arange,
        "torch.nn.functional.relu": _relu,
        "torch.nn.functional.softmax": _softmax(jax.nn.softmax),
        "torch.nn.functional.log_softmax": _softmax(jax.nn.log_softmax),
        "torch._C._nn.log_sigmoid": _logsigmoid,
        "torch.nn.functional.logsigmoid": _logsigmoid,
        "torch._C._nn.softplus": _softplus,
        "torch.nn.functional.softplus": _softplus,
        "operator.add": _arith(operator.add),
        "operator.sub": _arith(operator.sub),
        "operator.mul": _arith(operator.mul),
        "operator.truediv": _arith(operator.truediv),
        "operator.floordiv": _arith(operator.floordiv),
        "operator.mod": _arith(operator.mod),
        "operator.pow": _pow,
        "operator.matmul": lambda a, b: jnp.matmul(_array(a), _array(b)),
        "operator.neg": _unary(operator.neg),
        "operator.pos": _unary(operator.pos),
        "operator.abs": _unary(operator.abs),
        "operator.invert": _unary(operator.invert),
        "operator.eq": _arith(operator.eq),
        "operator.ne": _arith(operator.ne),
        "operator.lt": _arith(operator.lt),
        "operator.le": _arith(operator.le),
        "operator.gt": _arith(operator.gt),
        "operator.ge": _arith(operator.ge),
        "operator.and_": _arith(operator.and_),
        "operator.or_": _arith(operator.or_),
        "operator.getitem": _getitem,
        "math.log": _math_unary(math.log),
        "math.exp": _math_unary(math.exp),
        "math.sqrt": _math_unary(math.sqrt),
        "math.log1p": _math_unary(math.log1p),
    }
)

#: ``call_method`` targets (tensor methods) -> JAX; the tensor is the first argument.
METHODS: MappingProxyType[str, OpFn] = MappingProxyType(
    {
        **_SHARED,
        "reshape": _reshape_method,
        "view": _reshape_method,
        "size": _size,
        "dim": _dim,
        "numel": _numel,
        "to": _to,
        "float": _cast(jnp.float32),
        "type_as": _type_as,
        "contiguous": _identity,
        "double": _cast(jnp.float64),
        "expand_as": lambda x, other: jnp.broadcast_to(_array(x), _array(other).shape),
        "where": lambda x, condition, y: _where(condition, x, y),  # x.where(cond, y)
    }
)

#: The attributes ``getattr(tensor, name)`` may read (``x.shape[0]`` traces as one).
GETATTR_NAMES = frozenset({"shape", "ndim"})

#: ``{"dtype": name}`` constants.
DTYPES: MappingProxyType[str, Any] = MappingProxyType(
    {
        "float32": jnp.dtype(jnp.float32),
        "float16": jnp.dtype(jnp.float16),
        "bfloat16": jnp.dtype(jnp.bfloat16),
        "bool": jnp.dtype(jnp.bool_),
        "int32": jnp.dtype(jnp.int32),
        "float64": jnp.dtype(jnp.float64),
        "int64": jnp.dtype(jnp.int64),
    }
)
