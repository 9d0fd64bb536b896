"""`--precision auto`: bfloat16 only where the hardware computes it."""

import keras
import pytest

from common import precision

CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse2
"""


def test_cpu_flags_reads_the_first_cpus_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert precision.cpu_flags(str(path)) == {"fpu", "sse2", "avx2", "avx512f",
                                              "avx512_bf16", "amx_tile"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("capability, native", [
    ("8.0", True), ("8.6", True), ("10.0", True), ((9, 0), True),   # "10.0" < "8.0" as text
    ("7.5", False), ((7, 0), False), (None, False), ("unknown", False),
])
def test_gpus_from_ampere_on_have_bfloat16(capability, native):
    assert precision._gpu_has_bfloat16(capability) is native


@pytest.mark.parametrize("native, policy", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_follows_the_hardware_and_names_pass_through(monkeypatch, native, policy):
    monkeypatch.setattr(precision, "native_bfloat16", lambda: native)
    assert precision.resolve("auto") == policy
    assert precision.resolve("float32") == "float32"
    assert precision.resolve("mixed_bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="float16"):
        precision.resolve("float16")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's GPU rule")
@pytest.mark.parametrize("capability, native", [((8, 0), True), ((7, 5), False)])
def test_a_tensorflow_gpu_decides_by_its_compute_capability(monkeypatch, capability, native):
    import tensorflow as tf
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": capability})
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})  # not asked
    assert precision.native_bfloat16() is native


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's CPU rule")
def test_tensorflow_cpu_needs_bfloat16_flags_and_onednn(monkeypatch):
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU decides, not the CPU")
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not precision.native_bfloat16()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert precision.native_bfloat16()
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")   # plain kernels emulate bf16
    assert not precision.native_bfloat16()


def test_policy_is_set_inside_the_block_and_put_back_after_an_error():
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision.policy("mixed_bfloat16"):
            assert keras.layers.Dense(2).dtype_policy.compute_dtype == "bfloat16"
            raise RuntimeError("the block fails")
    assert keras.mixed_precision.global_policy().name == "float32"
