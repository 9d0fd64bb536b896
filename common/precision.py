"""Which compute precision pays on this machine.

Keras' "mixed_bfloat16" policy (bfloat16 compute, float32 weights) is a win
only where the hardware multiplies bfloat16 natively; elsewhere the backend
emulates it, and training gets slower, not faster. On this project's CPU
(avx512_bf16) a fine-tuning epoch of the reference net in bf16 took 0.92-0.99
of float32's time; with TensorFlow's oneDNN kernels switched off, the same CPU
took 10.2x as long in bf16 (`bench/precision_speed.py`, README "Precision").
"auto" therefore picks bf16 only where the hardware is known to compute it.
"""

import contextlib
import os

PRECISIONS = ("auto", "float32", "mixed_bfloat16")

# Linux /proc/cpuinfo flags of bfloat16 arithmetic units: AVX512-BF16 dot
# products (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on) and AMX.
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# NVIDIA GPUs multiply bfloat16 in tensor cores from Ampere (compute 8.0) on.
BFLOAT16_GPU_COMPUTE_CAPABILITY = (8, 0)


def cpu_flags(cpuinfo="/proc/cpuinfo"):
    """The instruction-set flags that Linux reports for the first CPU; an empty
    set where there is no such file (macOS, Windows)."""
    try:
        with open(cpuinfo) as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _compute_capability(text):
    """'8.6' or (8, 6) -> (8, 6); None or unparsable -> None."""
    try:
        parts = text.split(".") if isinstance(text, str) else text
        return tuple(int(part) for part in parts)
    except (TypeError, ValueError):
        return None


def _gpu_has_bfloat16(capability):
    capability = _compute_capability(capability)
    return capability is not None and capability >= BFLOAT16_GPU_COMPUTE_CAPABILITY


def native_bfloat16():
    """Whether Keras' backend computes bfloat16 in hardware on the device it
    runs on: a TPU; an NVIDIA GPU of compute capability >= 8.0; or, with
    TensorFlow and its oneDNN kernels (the default on x86 Linux), a CPU with
    one of `BFLOAT16_CPU_FLAGS`. False where unknown (JAX or PyTorch on a CPU,
    other GPUs): float32 is never the slow choice."""
    import keras

    from common import machine
    device = machine.accelerator_details()
    if device is not None:
        return device["platform"] == "tpu" or (
            device["platform"] in ("gpu", "cuda")
            and _gpu_has_bfloat16(device["compute_capability"]))
    if keras.backend.backend() == "tensorflow":
        onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").lower() not in ("0", "false")
        return onednn and bool(BFLOAT16_CPU_FLAGS & cpu_flags())
    return False


def resolve(precision):
    """A Keras dtype policy name for `precision` (one of `PRECISIONS`): "auto"
    becomes "mixed_bfloat16" where `native_bfloat16()`, else "float32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "mixed_bfloat16" if native_bfloat16() else "float32"
    return precision


@contextlib.contextmanager
def policy(name):
    """Keras' global dtype policy set to `name` inside the block and put back
    after it, however the block ends (Keras has no scope for it)."""
    import keras
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
