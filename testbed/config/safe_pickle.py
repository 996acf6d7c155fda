"""Reading pickles from files nobody vouches for: plain data only, never code.

`pickle.load` runs whatever callable a file names (`os.system`, `builtins.eval`, ...). This
unpickler resolves no global at all except the two NumPy needs to rebuild a numeric scalar
(`np.float64(1.5)` is pickled as `numpy._core.multiarray.scalar(numpy.dtype('f8'), raw bytes)`):
dicts, lists, tuples, strings, numbers, booleans and None need no global, so they load (bytes
too from protocol 3 on; protocols 0-2 write them through `_codecs.encode`, which is refused).
Even those two are hostile in the wrong hands: a scalar of a non-numeric dtype (timedelta, object,
void) is refused, and whatever else goes wrong while loading (a dtype or scalar built from a bad
state raises TypeError, ValueError, even SystemError) is an UnreadablePickleError.
"""

import io
import pickle
from typing import Any

# (module, name) pairs a pickle of plain data may name: NumPy scalars, as NumPy 1 and 2 write them.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),   # NumPy 1.x
    ("numpy._core.multiarray", "scalar"),  # NumPy 2.x
})
_NUMERIC_KINDS = "biuf"  # NumPy dtype kinds of plain numbers: bool, signed, unsigned, floating
_ALLOWED = "allowed: plain data only: dicts, lists, tuples, strings, numbers, NumPy numeric scalars"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something other than plain data (a function or class to call)."""


class UnreadablePickleError(pickle.UnpicklingError):
    """The pickle is corrupt or builds its allowed objects from a state they refuse."""


class PlainDataUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside `_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refused to load: the pickle references {module}.{name} ({_ALLOWED})")
        found = super().find_class(module, name)
        return _numeric_scalar(found) if name == "scalar" else found


def _numeric_scalar(scalar):
    """NumPy's scalar constructor, for numeric dtypes only."""
    def build(dtype, *state):
        kind = getattr(dtype, "kind", None)
        if not isinstance(kind, str) or kind not in _NUMERIC_KINDS:
            raise UnsafePickleError(f"refused to load: a NumPy scalar of dtype {getattr(dtype, 'name', '?')} "
                                    f"({_ALLOWED})")
        return scalar(dtype, *state)
    return build


def load_plain(data: bytes) -> Any:
    """Unpickle `data` holding plain data only: UnsafePickleError when it names anything else,
    UnreadablePickleError (naming only the kind of failure: its text may quote the data) when it cannot be read."""
    try:
        return PlainDataUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise UnreadablePickleError(type(error).__name__) from None
