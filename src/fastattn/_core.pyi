"""Typed stub of the compiled binding ``fastattn._core`` (its public surface)."""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_Causal = Union[bool, np.bool_, str, None]
_Real = Union[int, float, np.integer[Any], np.floating[Any]]
_Window = Union[Tuple[int, int], List[int], None]
_Ints = Optional[npt.ArrayLike]

def attention_paged(
    q: _Array,
    k_pages: _Array,
    v_pages: _Array,
    block_table: _Array,
    cu_seqlens_q: npt.ArrayLike,
    seq_lens: npt.ArrayLike,
    *,
    causal: _Causal = ...,
    scale: Optional[_Real] = ...,
    out: Optional[_Array] = ...,
    return_lse: Union[bool, np.bool_] = ...,
    window: _Window = ...,
    alibi_slopes: Optional[npt.ArrayLike] = ...,
    softcap: Optional[_Real] = ...,
    num_threads: int = ...,
    k_scale: Optional[_Array] = ...,
    v_scale: Optional[_Array] = ...,
) -> Any: ...

def attention(
    q: _Array,
    k: _Array,
    v: _Array,
    *,
    mask: Optional[_Array] = ...,
    causal: _Causal = ...,
    scale: Optional[_Real] = ...,
    out: Optional[_Array] = ...,
    return_lse: Union[bool, np.bool_] = ...,
    window: _Window = ...,
    alibi_slopes: Optional[npt.ArrayLike] = ...,
    softcap: Optional[_Real] = ...,
    kv_lengths: _Ints = ...,
    return_weights: Union[bool, np.bool_] = ...,
    cu_seqlens_q: Optional[_Array] = ...,
    cu_seqlens_k: Optional[_Array] = ...,
    max_seqlen_q: int = ...,
    max_seqlen_k: int = ...,
    num_threads: int = ...,
    precision: int = ...,
    k_scale: Optional[_Array] = ...,
    v_scale: Optional[_Array] = ...,
) -> Union[_Array, Tuple[_Array, ...]]: ...
def plan(q: _Array, k: _Array, v: _Array, **options: Any) -> Dict[str, Any]:
    """The keyword arguments of ``attention``; returns the C core's plan."""

_PRECISIONS: Tuple[str, ...]


# runtime
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def has_openmp() -> bool: ...
def isa_names() -> List[str]: ...
def isa_compiled() -> List[str]: ...
def isa_available() -> List[str]: ...
def get_isa() -> str: ...
def set_isa(name: str) -> None: ...
def bf16_dot_product() -> bool: ...
def bf16_tile_policy() -> str: ...
def build_info() -> Dict[str, Union[str, bool]]: ...

# probes and test hooks
def exp2(x: _Array) -> _Array: ...
def tanh(x: _Array) -> _Array: ...
def fma_peak(isa: Optional[str] = ..., seconds: float = ...) -> float: ...

LINEAR_PANEL: int
LINEAR_KALIGN: int
LINEAR_I8_BLOCK: int

LINEAR_ACTIVATIONS: Dict[Optional[str], int]
def linear_f32(x: _Array, packed: _Array, bias: Optional[_Array], out: _Array,
               residual: Optional[_Array] = ..., activation: Optional[str] = ...,
               num_threads: int = ..., w_scale: Optional[_Array] = ...) -> _Array: ...
def linear_kernel(dtype: str) -> str: ...
def layer_norm_f32(x: _Array, weight: _Array, bias: _Array, eps: float, out: _Array,
                   residual: Optional[_Array] = ...) -> _Array: ...
def dot_peak(dtype: str, seconds: float = ...) -> Optional[float]: ...
def read_bandwidth(nbytes: int = ..., repeat: int = ...) -> float: ...
def amx_status(request: bool = ...) -> Dict[str, Any]: ...
def amx_peak(seconds: float = ..., dtype: str = ...) -> float: ...
def tile_self_test_status() -> Dict[str, Any]: ...
def tile_self_test(subject: str, inject: str = ..., timeout: float = ...) -> Dict[str, Any]: ...
def tile_self_test_decide(subject: str, inject: str = ..., timeout: float = ...) -> str: ...
