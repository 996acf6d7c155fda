"""A ctypes binding to the libespeak-ng of the espeakng-loader wheel: text -> float32 audio."""

import ctypes
import os
import threading

import numpy as np

from testbed.errors import DataError

# espeak_AUDIO_OUTPUT: synthesise in the calling thread and hand samples to our callback.
AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize options: report errors instead of calling exit() inside the library.
INITIALIZE_DONT_EXIT = 0x8000
# espeak_POSITION_TYPE and espeak_Synth flags.
POS_CHARACTER = 1
CHARS_UTF8 = 1
# espeak_PARAMETER ids and their documented ranges.
PARAM_RATE = 1  # words per minute, 80..450 (default 175)
PARAM_VOLUME = 2  # 0..200 (default 100)
PARAM_PITCH = 3  # base pitch, 0..100 (default 50)
PARAM_RANGE = 4  # pitch range, 0..100 (default 50; 0 = monotone)
RAND_SEED = 1  # for breath/frication noise, reset before every utterance

# int callback(short *wav, int numsamples, espeak_EVENT *events); non-zero aborts synthesis.
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


def _load_library() -> ctypes.CDLL:
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    for name in ("espeak_SetVoiceByName", "espeak_SetParameter", "espeak_Synth",
                 "espeak_Synchronize"):
        getattr(lib, name).restype = ctypes.c_int  # espeak_ERROR: 0 = EE_OK
    return lib


class Synthesizer:
    """eSpeak NG in this process. The library keeps global state and is not thread-safe, so there
    is at most one instance per process (use `Synthesizer.shared()`); calls are serialised.
    Output is reproducible only for the same sequence of calls in a fresh process: eSpeak's
    pitch flutter continues from the previous utterance (see testbed.data.synth)."""

    _instance: "Synthesizer | None" = None
    _instance_pid: int | None = None
    _create_lock = threading.Lock()

    def __init__(self):
        import espeakng_loader

        self._lib = _load_library()
        self._chunks: list[np.ndarray] = []
        self._voice: str | None = None
        self._callback = _CALLBACK(self._collect)  # keep a reference: C holds the pointer
        data_path = espeakng_loader.get_data_path().encode()
        # buflength 0 = default 60 ms chunks; the return value is the output rate in Hz
        rate = self._lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path,
                                           INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise DataError(f"{espeakng_loader.get_library_path()}: espeak_Initialize failed "
                            f"({rate}) with data {data_path.decode()}")
        self.sample_rate: int = rate  # Hz, 22050 for the bundled voices
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    @classmethod
    def shared(cls) -> "Synthesizer":
        """The process's synthesizer, created on first use (again after a fork)."""
        with cls._create_lock:
            if cls._instance is None or cls._instance_pid != os.getpid():
                cls._instance, cls._instance_pid = cls(), os.getpid()
            return cls._instance

    def _collect(self, wav, numsamples, _events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # continue synthesis

    def synthesize(self, text: str, voice: str = "en", pitch: int = 50, rate: int = 175,
                   pitch_range: int = 50, volume: int = 100) -> np.ndarray:
        """Speak `text` with `voice` (e.g. "en-us+f2"); float32 samples in [-1, 1] at
        `self.sample_rate`. pitch/pitch_range 0..100, rate in words per minute."""
        with self._lock:
            self._set_voice(voice)
            for param, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch),
                                 (PARAM_RANGE, pitch_range), (PARAM_VOLUME, volume)):
                self._check(self._lib.espeak_SetParameter(param, int(value), 0),
                            f"espeak_SetParameter({param}, {value})")
            # eSpeak seeds its noise generator from the clock at initialisation
            self._lib.espeak_ng_SetRandSeed(RAND_SEED)
            self._chunks = []
            encoded = text.encode("utf-8") + b"\0"
            self._check(self._lib.espeak_Synth(encoded, len(encoded), 0, POS_CHARACTER, 0,
                                               CHARS_UTF8, None, None), f"espeak_Synth({text!r})")
            self._check(self._lib.espeak_Synchronize(), "espeak_Synchronize")
            chunks, self._chunks = self._chunks, []
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768.0

    def _set_voice(self, voice: str) -> None:
        if self._voice != voice:  # loading a voice re-reads its dictionary
            self._check(self._lib.espeak_SetVoiceByName(voice.encode()), f"voice {voice!r}")
            self._voice = voice

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise DataError(f"eSpeak NG: {what} failed (espeak_ERROR {status})")
