"""Keras models as LiteRT flatbuffers, and what they cost in the LiteRT interpreter.

LiteRT (formerly TensorFlow Lite) is the runtime Android and many embedded
devices run models in. A flatbuffer is converted with builtin ops only, so it
runs in any LiteRT interpreter without TensorFlow's op library, in one of:

    float32        the weights as they are
    dynamic_int8   int8 weights, activations quantized on the fly per image
    int8           int8 weights and activations, their ranges calibrated on
                   training images (inputs and outputs stay float32)

and optionally with sparse weights encoded as such (`sparse=True`): a pruned
kernel is stored as its non-zero values plus their positions.

Measurements run in `ai_edge_litert`'s interpreter with XNNPACK, the CPU
delegate LiteRT applies by default.
"""

import gzip
import importlib
import json
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np

from common.measure import side_by_side, time_interleaved
from common.models import leaf_layers
from common.quiet import quiet_stderr

PRECISIONS = ("float32", "dynamic_int8", "int8")


def _export(model, **converter_options):
    """model.export(format="litert") with builtin ops only; the flatbuffer's bytes.

    Keras' exporter also allows TensorFlow ops (SELECT_TF_OPS), which a plain
    LiteRT interpreter cannot run: `supported_ops` overrides that.
    """
    import tensorflow as tf
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
               **converter_options}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with quiet_stderr(replay=False):  # the converter's C++ logs; its errors say it all
            model.export(path, format="litert", verbose=False, **options)
        with open(path, "rb") as f:
            return f.read()


def to_flatbuffer(model, precision="float32", calibration_images=None, sparse=False):
    """Convert a Keras model to a LiteRT flatbuffer (see `to_flatbuffers`).

    Parameters
    ----------
    model : keras.Model, inputs and outputs float32
    precision : "float32", "dynamic_int8" or "int8" (see the module docstring)
    calibration_images : ndarray (N, H, W, C), the inputs whose activation
        ranges fix int8's scales; required for "int8" alone. Pass training
        images: ranges fitted to the test images would flatter the accuracy.
    sparse : encode mostly-zero weight tensors sparsely (smaller file)

    Returns
    -------
    bytes : the flatbuffer

    Raises ValueError naming the first layer whose ops are not LiteRT builtins.
    """
    return to_flatbuffers([(model, precision, calibration_images, sparse)])[0]


def to_flatbuffers(jobs):
    """Flatbuffers of several conversions, each (model, precision,
    calibration_images or None, sparse) as `to_flatbuffer` takes them.

    Keras' LiteRT export needs the TensorFlow backend. Under another backend
    (JAX) the models are saved as .keras files, which any backend reads, and
    converted in one Python process with TensorFlow as Keras' backend.
    """
    for _, precision, calibration_images, _ in jobs:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"got {precision!r}")
        if precision == "int8" and (calibration_images is None or not len(calibration_images)):
            raise ValueError("int8 needs calibration_images (training images)")
    if keras.backend.backend() == "tensorflow":
        return [_convert(*job) for job in jobs]
    with tempfile.TemporaryDirectory() as folder:
        listed = []
        for i, (model, precision, calibration_images, sparse) in enumerate(jobs):
            model.save(os.path.join(folder, f"{i}.keras"))
            if calibration_images is not None:
                np.save(os.path.join(folder, f"{i}.npy"), np.asarray(calibration_images,
                                                                      np.float32))
            listed.append({"precision": precision, "sparse": bool(sparse),
                           "calibration": calibration_images is not None,
                           # where the model's own layer classes are defined, imported
                           # there before it is loaded (they register themselves)
                           "modules": sorted({type(layer).__module__
                                              for layer in leaf_layers(model)
                                              if not type(layer).__module__.startswith("keras")})})
        with open(os.path.join(folder, "jobs.json"), "w") as f:
            json.dump(listed, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run([sys.executable, "-m", "common.deploy", folder], cwd=root,
                              env={**os.environ, "KERAS_BACKEND": "tensorflow",
                                   "PYTHONPATH": os.pathsep.join([root, *sys.path])},
                              capture_output=True, text=True)
        if done.returncode == 2:
            raise ValueError(done.stderr.strip().splitlines()[-1])
        if done.returncode != 0:
            raise RuntimeError(f"converting in TensorFlow failed: {done.stderr.strip()}")
        out = []
        for i in range(len(jobs)):
            with open(os.path.join(folder, f"{i}.tflite"), "rb") as f:
                out.append(f.read())
        return out


def _convert_folder(folder):
    """The TensorFlow side of `to_flatbuffers`: every job listed in `folder`."""
    with open(os.path.join(folder, "jobs.json")) as f:
        jobs = json.load(f)
    for i, job in enumerate(jobs):
        for module in job["modules"]:
            importlib.import_module(module)
        model = keras.saving.load_model(os.path.join(folder, f"{i}.keras"), compile=False,
                                        safe_mode=True)
        calibration = np.load(os.path.join(folder, f"{i}.npy")) if job["calibration"] else None
        flatbuffer = _convert(model, job["precision"], calibration, job["sparse"])
        with open(os.path.join(folder, f"{i}.tflite"), "wb") as f:
            f.write(flatbuffer)


def _convert(model, precision, calibration_images, sparse):
    """`to_flatbuffer` with the TensorFlow backend."""
    import tensorflow as tf
    options = {}
    optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY] if sparse else []
    if precision != "float32":
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if optimizations:
        options["optimizations"] = optimizations
    if precision == "int8":
        images = np.asarray(calibration_images, np.float32)
        options["representative_dataset"] = lambda: ([image[None]] for image in images)
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
    try:
        return _export(model, **options)
    except Exception as err:  # the converter raises its own error classes
        layer = unsupported_layer(model)
        if layer is None:
            raise
        raise ValueError(f"layer {layer.name!r} ({type(layer).__name__}) has no LiteRT "
                         "builtin op; LiteRT cannot run this model without TensorFlow's "
                         f"ops ({type(err).__name__})") from None


def unsupported_layer(model):
    """The first layer of `model` that does not convert to builtin ops alone,
    or None. Each single-input layer is converted on its own (seconds each):
    the converter's own error names graph ops, not layers."""
    for layer in leaf_layers(model):
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer.input, (list, tuple)):
            continue
        alone = keras.Sequential([keras.Input(tuple(layer.input.shape[1:])), layer])
        try:
            _export(alone)
        except Exception:
            return layer
    return None


def op_names(flatbuffer):
    """The set of op names (e.g. "CONV_2D") in a flatbuffer, as converted (no
    delegate has replaced any of them)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    plain = Interpreter(model_content=flatbuffer,
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    return {op["op_name"] for op in plain._get_ops_details()}


def interpreter(flatbuffer, threads=1, batch_size=1):
    """A LiteRT interpreter for `flatbuffer`, its input resized to `batch_size`
    images, tensors allocated, and `.delegate` saying what runs it.

    XNNPACK, LiteRT's default CPU delegate, runs the ops it supports with
    `threads` threads. Where it refuses the model (it cannot take some sparse
    int8 layers, for one), LiteRT's builtin kernels run it instead.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def make(**options):
        runner = Interpreter(model_content=flatbuffer, num_threads=threads, **options)
        (source,) = runner.get_input_details()
        runner.resize_tensor_input(source["index"], [batch_size, *source["shape"][1:]])
        runner.allocate_tensors()
        return runner
    try:
        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            runner = make()
        runner.delegate = "XNNPACK"
    except RuntimeError as err:
        runner = make(experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        runner.delegate = f"builtin kernels (XNNPACK refused: {' '.join(str(err).split())})"
    return runner


def predictor(flatbuffer, threads=1, batch_size=1):
    """A function images (batch_size, H, W, C) float32 -> outputs, in LiteRT
    (see `interpreter`); its `.delegate` says what runs it."""
    runner = interpreter(flatbuffer, threads, batch_size)
    source = runner.get_input_details()[0]["index"]
    target = runner.get_output_details()[0]["index"]

    def predict(images):
        runner.set_tensor(source, images)
        runner.invoke()
        return runner.get_tensor(target)
    predict.delegate = runner.delegate
    return predict


def predict(flatbuffer, images, batch_size=500, threads=2):
    """The flatbuffer's outputs for `images` (N, H, W, C), batch by batch."""
    images = np.asarray(images, np.float32)
    full = predictor(flatbuffer, threads, batch_size)
    outputs = [full(images[i:i + batch_size]) if len(images[i:i + batch_size]) == batch_size
               else predictor(flatbuffer, threads, len(images) - i)(images[i:])
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs)


def sizes(flatbuffer):
    """Bytes on disk, and gzipped (level 9): zeros and repeated values compress."""
    return {"bytes": len(flatbuffer), "gzip_bytes": len(gzip.compress(flatbuffer, 9))}


def time_per_image(flatbuffers, images, threads=(1, 2), repeats=7, seed=0, progress=False):
    """Latency at batch 1 in LiteRT: mean seconds per image of each flatbuffer
    at each thread count, all of them interleaved in every round, warm-up
    excluded (see `measure.time_interleaved`).

    flatbuffers : dict name -> bytes
    images : ndarray (N, H, W, C), or dict name -> such an array (models of
        different input shapes; the same N for all)
    Returns dict (name, threads) -> list of `repeats` seconds per image.
    """
    own = images if isinstance(images, dict) else {name: images for name in flatbuffers}
    singles = {name: [np.asarray(image[None], np.float32) for image in own[name]]
               for name in flatbuffers}
    count = {len(v) for v in singles.values()}
    if len(count) != 1:
        raise ValueError(f"every flatbuffer needs as many images, got {sorted(count)}")
    (count,) = count
    runners = {(name, t): lambda i, run=predictor(flatbuffer, t), xs=singles[name]: run(xs[i])
               for name, flatbuffer in flatbuffers.items() for t in threads}
    seconds = time_interleaved(runners, range(count), repeats, seed, progress)
    return {key: [s / count for s in values] for key, values in seconds.items()}


# The per-call cost of the Python side (set_tensor, invoke, get_tensor of a
# 32x32x3 image) is what a model that does next to nothing takes: one multiply.
CALL_OVERHEAD = "(one multiply: the per-call overhead)"


def _one_multiply(shape):
    return to_flatbuffer(keras.Sequential([keras.Input(shape), keras.layers.Rescaling(1.0)]))


def latency(flatbuffers, images, baseline, threads=(1,), repeats=7, seed=0, progress=True):
    """Latency per image at batch 1 of each flatbuffer at each thread count,
    all interleaved in every round together with a one-multiply model (the
    Python per-call overhead, `CALL_OVERHEAD`), and each one's ratio to the
    `baseline` flatbuffer's median at the same thread count.

    Returns dict str(threads) -> name -> {"median", "min", "max", "all", "ratio"}
    """
    timed = {**flatbuffers, CALL_OVERHEAD: _one_multiply(images.shape[1:])}
    seconds = time_per_image(timed, images, threads, repeats, seed, progress)
    return {str(t): side_by_side({name: seconds[name, t] for name in timed}, baseline)
            for t in threads}


if __name__ == "__main__":  # the TensorFlow side of to_flatbuffers under another backend
    try:
        _convert_folder(sys.argv[1])
    except ValueError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
