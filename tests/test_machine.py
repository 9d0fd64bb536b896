"""Machine identity: parsed from sample /proc/cpuinfo texts, labelled, compared."""

import pytest

from common import machine

X86_VNNI = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
"""
X86_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp i8mm sve
CPU implementer\t: 0x41
CPU part\t: 0xd40
"""


def test_x86_with_vnni():
    name, features = machine.parse_cpuinfo(X86_VNNI, "x86_64")
    assert name == "AMD EPYC 9R14 96-Core Processor"
    assert features == ["avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"]
    identity = {"cpu": name, "features": features}
    assert machine.label(identity, 1) == "AMD EPYC 9R14, AVX-512 VNNI, 1 thread"
    assert machine.has_int8_dot_product(identity)


def test_x86_without_vnni():
    name, features = machine.parse_cpuinfo(X86_AVX2, "x86_64")
    identity = {"cpu": name, "features": features}
    assert features == ["avx2", "fma"]
    assert machine.label(identity, 2) == "AMD EPYC 7B13, AVX2, no VNNI, 2 threads"
    assert not machine.has_int8_dot_product(identity)


def test_arm_with_dotprod_and_no_model_name():
    name, features = machine.parse_cpuinfo(ARM, "aarch64")
    assert name == "Arm CPU part 0xd40"
    assert features == ["asimddp", "i8mm", "sve"]
    assert machine.label({"cpu": name, "features": features}) == \
        "Arm part 0xd40, dotprod + i8mm"
    assert machine.has_int8_dot_product({"cpu": name, "features": features})


def test_an_empty_cpuinfo_falls_back_to_the_architecture():
    assert machine.parse_cpuinfo("", "arm64") == ("arm64", [])


def test_identities_differ_by_feature_and_version(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(X86_VNNI)
    here = machine.identity(str(path))
    assert here["features"] == ["avx2", "avx512_bf16", "avx512_vnni", "avx512f", "fma"]
    assert machine.same_machine(here, machine.identity(str(path)))
    other = {**here, "features": ["avx2", "fma"]}
    newer = {**here, "versions": {**here["versions"], "ai-edge-litert": "9.9"}}
    assert not machine.same_machine(here, other)
    assert not machine.same_machine(here, newer)
    assert machine.key(here) != machine.key(other)


def test_this_machine_picks_the_last_block_of_this_identity():
    here = machine.identity()
    blocks = [{"machine": here, "n": 1}, {"machine": {**here, "cpu": "other"}, "n": 2},
              {"machine": here, "n": 3}, {"machine": {**here, "cpu": "other"}, "n": 4}]
    assert machine.this_machine(blocks)["n"] == 3
    assert machine.this_machine(blocks[1:2]) is None


def test_accelerator_names_the_gpu_keras_computes_on(monkeypatch):
    import keras
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the GPU is faked through TensorFlow's device list")
    import tensorflow as tf
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])
    assert machine.accelerator() is None
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "NVIDIA H200"})
    assert machine.accelerator() == "NVIDIA H200"
