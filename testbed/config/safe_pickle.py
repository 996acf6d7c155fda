"""Reading pickles from files nobody vouches for: plain data only, never code.

`pickle.load` runs whatever callable a file names (`os.system`, `builtins.eval`, ...). This
unpickler resolves no global at all except the two NumPy needs to rebuild a numeric scalar
(`np.float64(1.5)` is pickled as `numpy._core.multiarray.scalar(numpy.dtype('f8'), raw bytes)`):
dicts, lists, tuples, strings, numbers, booleans and None need no global, so they load (bytes
too from protocol 3 on; protocols 0-2 write them through `_codecs.encode`, which is refused).
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


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names something other than plain data (a function or class to call)."""


class PlainDataUnpickler(pickle.Unpickler):
    """An Unpickler that refuses every global outside `_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refused to load: the pickle references {module}.{name} (allowed: plain data only: "
                "dicts, lists, tuples, strings, numbers, NumPy numeric scalars)")
        return super().find_class(module, name)


def load_plain(data: bytes) -> Any:
    """Unpickle `data` holding plain data only; UnsafePickleError when it names anything else."""
    return PlainDataUnpickler(io.BytesIO(data)).load()
