"""XLA's FFI on the CPU for nbxent.jax: Python host functions run on XLA's own buffers.

``jax.pure_callback`` copies its operands into NumPy arrays and its results back
into XLA's buffers. This module registers one typed-FFI handler instead
(``jax.ffi.register_ffi_target``, XLA FFI API 0.x): a ``ctypes`` function that
XLA calls with its call frame, whose buffers become NumPy arrays over XLA's own
memory (no copy). The inputs are read only; the host function writes its results
straight into the output buffers (nbxent's ``out=``).

The call frame's C layout is declared below from ``xla/ffi/api/c_api.h`` in
jaxlib's ``include`` directory. The handler reports the header version it was
written against (0.3) when XLA asks for its metadata; XLA refuses the
registration if it cannot serve that version, and ``nbxent.jax`` then falls back
to the callback (``why_unavailable`` says why).

One target serves every call: each call carries one int64 attribute,
``host_id``, the index of the host function to run in ``_HOSTS``.
"""

import ctypes
import sys
import threading

import numpy as np

TARGET_NAME = "nbxent_host_function"

_C = ctypes


class _ExtensionBase(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("type", _C.c_int), ("next", _C.c_void_p)]


class _ApiVersion(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("extension_start", _C.c_void_p),
                ("major_version", _C.c_int), ("minor_version", _C.c_int)]


class _Metadata(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("api_version", _ApiVersion),
                ("traits", _C.c_uint32), ("state_type_id", _C.c_int64)]


class _MetadataExtension(_C.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", _C.POINTER(_Metadata))]


class _Buffer(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("extension_start", _C.c_void_p),
                ("dtype", _C.c_int), ("data", _C.c_void_p), ("rank", _C.c_int64),
                ("dims", _C.POINTER(_C.c_int64))]


class _Buffers(_C.Structure):
    """XLA_FFI_Args and XLA_FFI_Rets share this layout."""
    _fields_ = [("struct_size", _C.c_size_t), ("extension_start", _C.c_void_p),
                ("size", _C.c_int64), ("types", _C.POINTER(_C.c_int)),
                ("buffers", _C.POINTER(_C.c_void_p))]


class _Attrs(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("extension_start", _C.c_void_p),
                ("size", _C.c_int64), ("types", _C.POINTER(_C.c_int)),
                ("names", _C.c_void_p), ("attrs", _C.POINTER(_C.c_void_p))]


class _Scalar(_C.Structure):
    _fields_ = [("dtype", _C.c_int), ("value", _C.c_void_p)]


class _CallFrame(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("extension_start", _C.POINTER(_ExtensionBase)),
                ("api", _C.c_void_p), ("ctx", _C.c_void_p), ("stage", _C.c_int),
                ("args", _Buffers), ("rets", _Buffers), ("attrs", _Attrs),
                ("future", _C.c_void_p)]


class _ErrorCreateArgs(_C.Structure):
    _fields_ = [("struct_size", _C.c_size_t), ("extension_start", _C.c_void_p),
                ("message", _C.c_char_p), ("errc", _C.c_int)]


# XLA_FFI_CallFrame_STRUCT_SIZE: up to the last field XLA always fills, attrs.
_CALL_FRAME_SIZE = _CallFrame.attrs.offset + _C.sizeof(_Attrs)
# XLA_FFI_Api: struct_size, extension_start, XLA_FFI_Api_Version (24 bytes),
# internal_api, then the function pointers, XLA_FFI_Error_Create first.
_ERROR_CREATE_OFFSET = 8 + 8 + _C.sizeof(_ApiVersion) + 8
_ERROR_CREATE = _C.CFUNCTYPE(_C.c_void_p, _C.POINTER(_ErrorCreateArgs))
_HANDLER = _C.CFUNCTYPE(_C.c_void_p, _C.POINTER(_CallFrame))

_API_VERSION = (0, 3)              # of the c_api.h the layout above was read from
_EXTENSION_METADATA = 1
_STAGE_EXECUTE = 3
_ATTR_SCALAR = 3
_INVALID_ARGUMENT, _INTERNAL = 3, 13
_DTYPES = {1: np.bool_, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.uint8,
           7: np.uint16, 8: np.uint32, 9: np.uint64, 10: np.float16, 11: np.float32,
           12: np.float64}

_HOSTS = []            # host functions by host_id
_HOST_IDS = {}         # host function -> host_id
_lock = threading.Lock()
_state = {"registered": False, "why_unavailable": None}


# Linux's madvise(MADV_HUGEPAGE): XLA's CPU allocator takes large buffers fresh from the
# kernel in 4 KiB pages, so writing a new N×C gradient faults each page in; NumPy asks
# for transparent huge pages on its own large arrays, and so does nbxent on the output
# buffers it is about to write first (measured: benchmarks/RESULTS.md, "PyTorch and JAX
# wrappers"). Advice only: where the kernel ignores it, nothing changes.
_MADV_HUGEPAGE = 14
_HUGE_PAGE = 2 << 20
_madvise = None
if sys.platform.startswith("linux"):
    try:
        _madvise = _C.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = (_C.c_void_p, _C.c_size_t, _C.c_int)
        _madvise.restype = _C.c_int
    except (OSError, AttributeError):
        _madvise = None


def _advise_huge_pages(address, n_bytes):
    """Ask for huge pages on the whole 2 MiB pages inside [address, address + n_bytes)."""
    start = -(-address // _HUGE_PAGE) * _HUGE_PAGE
    end = (address + n_bytes) // _HUGE_PAGE * _HUGE_PAGE
    if _madvise is not None and end - start >= 2 * _HUGE_PAGE:
        _madvise(start, end - start, _MADV_HUGEPAGE)


def _as_array(address, writable):
    """The XLA_FFI_Buffer at ``address`` as a NumPy array over XLA's memory."""
    buffer = _C.cast(address, _C.POINTER(_Buffer)).contents
    if buffer.dtype not in _DTYPES:
        raise TypeError(f"an XLA buffer of FFI dtype {buffer.dtype}: nbxent reads bool, "
                        f"integer and float16/32/64 buffers")
    dtype = np.dtype(_DTYPES[buffer.dtype])
    shape = tuple(buffer.dims[i] for i in range(buffer.rank))
    n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if n_bytes == 0:
        return np.empty(shape, dtype)
    if writable:
        _advise_huge_pages(buffer.data, n_bytes)
    array = np.frombuffer((_C.c_char * n_bytes).from_address(buffer.data), dtype)
    array = array.reshape(shape)
    array.flags.writeable = writable
    return array


def _error(api, exc):
    """An XLA_FFI_Error carrying ``exc``'s type and message (XLA copies the message)."""
    create = _ERROR_CREATE(_C.c_void_p.from_address(api + _ERROR_CREATE_OFFSET).value)
    message = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
    code = _INVALID_ARGUMENT if isinstance(exc, (ValueError, TypeError)) else _INTERNAL
    args = _ErrorCreateArgs(_C.sizeof(_ErrorCreateArgs), None, message, code)
    return create(_C.byref(args))


def _populate_metadata(frame):
    extension = _C.cast(frame.extension_start, _C.POINTER(_MetadataExtension)).contents
    metadata = extension.metadata.contents
    metadata.api_version = _ApiVersion(_C.sizeof(_ApiVersion), None, *_API_VERSION)
    metadata.traits = 0


def _handle(frame_pointer):
    """XLA_FFI_Handler: the metadata query, or one call of a registered host function."""
    frame = frame_pointer.contents
    try:
        if frame.extension_start and frame.extension_start.contents.type == _EXTENSION_METADATA:
            _populate_metadata(frame)
            return None
        if frame.struct_size < _CALL_FRAME_SIZE:
            raise RuntimeError(f"XLA's call frame has {frame.struct_size} bytes, fewer than "
                               f"the {_CALL_FRAME_SIZE} nbxent's layout reads")
        if frame.stage != _STAGE_EXECUTE:
            return None
        attrs = frame.attrs
        if attrs.size != 1 or attrs.types[0] != _ATTR_SCALAR:
            raise RuntimeError("expected one scalar attribute, host_id")
        scalar = _C.cast(attrs.attrs[0], _C.POINTER(_Scalar)).contents
        host = _HOSTS[_C.c_int64.from_address(scalar.value).value]
        inputs = [_as_array(frame.args.buffers[i], False) for i in range(frame.args.size)]
        outputs = [_as_array(frame.rets.buffers[i], True) for i in range(frame.rets.size)]
        host(inputs, outputs)
        return None
    except BaseException as exc:    # nothing may unwind into XLA's C++
        return _error(frame.api, exc)


_handler = _HANDLER(_handle)       # kept alive as long as the module: XLA holds its address


def why_unavailable():
    """None once the FFI target is registered with XLA, else the reason it cannot be."""
    with _lock:
        if not _state["registered"] and _state["why_unavailable"] is None:
            try:
                import jax
                address = _C.cast(_handler, _C.c_void_p).value
                jax.ffi.register_ffi_target(TARGET_NAME, jax.ffi.pycapsule(address),
                                            platform="cpu")
                _state["registered"] = True
            except Exception as exc:     # an older JAX without jax.ffi, or XLA's refusal
                _state["why_unavailable"] = f"{type(exc).__name__}: {exc}"
        return _state["why_unavailable"]


def host_id(host):
    """The id XLA passes back to run ``host(inputs, outputs)``; one per distinct ``host``."""
    with _lock:
        if host not in _HOST_IDS:
            _HOST_IDS[host] = len(_HOSTS)
            _HOSTS.append(host)
        return _HOST_IDS[host]


def call(host, result_structs, *args, vmap_method="expand_dims", input_output_aliases=None):
    """``host(inputs, outputs)`` as an XLA custom call on the CPU; returns the results.

    ``inputs`` are read-only NumPy views of ``args``' buffers, ``outputs`` writable
    views of the result buffers (shapes and dtypes of ``result_structs``, every
    element to be written). Call ``why_unavailable()`` first: it registers the target.
    Exceptions raised by ``host`` reach the caller as JAX's runtime error, whose
    message starts with the exception's type and message. ``input_output_aliases``
    ({input index: result index}) gives a result an input's buffer, as
    ``jax.ffi.ffi_call`` does; ``host`` then sees the two views over the same memory.
    """
    import jax

    return jax.ffi.ffi_call(TARGET_NAME, result_structs, vmap_method=vmap_method,
                            input_output_aliases=input_output_aliases)(
        *args, host_id=np.int64(host_id(host)))
