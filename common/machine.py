"""Which machine a timing was measured on.

A forward time says as much about the CPU as about the model: whether int8
beats float32 in LiteRT depends on int8 dot-product instructions (AVX-512 VNNI,
AVX-VNNI, Arm dotprod), bfloat16 training on avx512_bf16 or AMX. Every timing
is therefore stored with the identity of its machine: the CPU's model name,
the instruction-set features that select kernels, the logical cores and the
library versions. A timing is reused, compared or drawn only beside timings
of the same identity (`same_machine`).
"""

import hashlib
import json
import os
import platform
from importlib import metadata

# The /proc/cpuinfo flags that decide which kernels XNNPACK and oneDNN run.
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_bf16", "amx_int8", "amx_tile")
ARM_FEATURES = ("asimddp", "i8mm", "sve", "sme")
FEATURES = X86_FEATURES + ARM_FEATURES
# The libraries whose versions change a time: the runtime and the converter
# (Keras timings also store the backend they ran on).
LIBRARIES = ("tensorflow", "keras", "ai-edge-litert")

# What a label says of the int8 dot-product features a CPU has, and, without
# any, of its widest vectors.
INT8_DOT_PRODUCT = {"avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI", "amx_int8": "AMX",
                    "asimddp": "dotprod", "i8mm": "i8mm"}
_WITHOUT = (("avx512f", "AVX-512, no VNNI"), ("avx2", "AVX2, no VNNI"))


def parse_cpuinfo(text, architecture):
    """(CPU model name, sorted kernel-selecting features) from /proc/cpuinfo text.

    x86 lists "model name" and "flags"; Arm lists "Features" and often no
    model name (then "CPU part" names it, or the architecture does).
    """
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    name = (fields.get("model name") or fields.get("hardware")
            or (f"Arm CPU part {fields['cpu part']}" if "cpu part" in fields else architecture))
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    return " ".join(name.split()), sorted(flags & set(FEATURES))


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def identity(cpuinfo_path="/proc/cpuinfo"):
    """This machine's identity: a dict of CPU name, architecture, features,
    logical cores and library versions (None for a library not installed)."""
    architecture = platform.machine()
    name, features = parse_cpuinfo(_read(cpuinfo_path), architecture)
    if name == architecture and platform.processor():
        name = platform.processor()
    return {"cpu": name, "architecture": architecture, "features": features,
            "logical_cores": os.cpu_count(),
            "versions": {package: _version(package) for package in LIBRARIES}}


def accelerator_details():
    """The GPU or TPU Keras' backend computes on, as {"name", "platform",
    "compute_capability"} (the last None where not reported), or None on a CPU."""
    import keras
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        device = jax.devices()[0]
        return None if device.platform == "cpu" else {
            "name": device.device_kind, "platform": device.platform,
            "compute_capability": getattr(device, "compute_capability", None)}
    if backend == "tensorflow":
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            return None
        details = tf.config.experimental.get_device_details(gpus[0])
        return {"name": details.get("device_name", "GPU"), "platform": "gpu",
                "compute_capability": details.get("compute_capability")}
    if backend == "torch":
        import torch
        return {"name": torch.cuda.get_device_name(), "platform": "gpu",
                "compute_capability": torch.cuda.get_device_capability()} \
            if torch.cuda.is_available() else None
    return None


def accelerator():
    """The name of the GPU or TPU Keras' backend computes on ("NVIDIA H200"),
    None on a CPU.

    Stored with each run beside `identity()` (which names the CPU that timings
    ran on): where a model was trained changes its numbers, not its timings.
    """
    device = accelerator_details()
    return device and device["name"]


def key(machine):
    """8 hex digits naming a machine identity (folder names, result keys)."""
    return hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:8]


def same_machine(a, b):
    """Whether two identities are the same machine and libraries."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def label(machine, threads=None):
    """A short form for tables and figures: "Intel Xeon, AMX int8, 1 thread"."""
    name = machine["cpu"]
    for noise in ("(R)", "(TM)", "(tm)", " Processor", " CPU", " with Radeon Graphics"):
        name = name.replace(noise, "")
    name = " ".join(name.split()[:3])
    features = set(machine["features"])
    dot = [text for flag, text in INT8_DOT_PRODUCT.items() if flag in features]
    kind = " + ".join(dot) if dot else next(
        (text for flag, text in _WITHOUT if flag in features), "no int8 dot product")
    parts = [name, kind]
    if threads is not None:
        parts.append(f"{threads} thread" + ("s" if threads != 1 else ""))
    return ", ".join(parts)


def has_int8_dot_product(machine):
    """Whether the CPU has int8 dot-product instructions (where int8 pays in LiteRT)."""
    return bool(set(INT8_DOT_PRODUCT) & set(machine["features"]))


def this_machine(blocks):
    """The last of `blocks` (timings, each with its "machine") measured on this
    machine, or None."""
    here = identity()
    return next((b for b in reversed(blocks or []) if same_machine(b["machine"], here)), None)
