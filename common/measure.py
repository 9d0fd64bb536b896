"""What a model costs: parameters, FLOPs and forward-pass time, measured side by side."""

import contextlib
import random
import sys
import time

import keras
import numpy as np
from keras import layers

from common import cli
from common.models import leaf_layers


def count_params(model):
    """Number of weights, trainable or not."""
    return int(model.count_params())


def count_nonzero_params(model):
    """Number of weights that are not exactly zero (pruned weights do not count)."""
    return int(sum(np.count_nonzero(keras.ops.convert_to_numpy(w)) for w in model.weights))


def layer_calls(model):
    """(layer, output shape) for each call of each layer in `model`'s graph,
    nested models opened up at the shapes they were built for. A model without
    a graph (subclassed) gives each layer once, at its own output shape."""
    # Keras keeps a functional graph's calls as nodes by depth (a Sequential
    # through the functional model it builds); there is no public accessor.
    graph = getattr(model, "_functional", None) or model
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if by_depth is None:
        yield from ((layer, layer.output.shape) for layer in leaf_layers(model))
        return
    for depth in sorted(by_depth, reverse=True):       # inputs first
        for node in by_depth[depth]:
            if isinstance(node.operation, keras.Model):
                yield from layer_calls(node.operation)
            elif not isinstance(node.operation, layers.InputLayer):
                yield node.operation, node.output_tensors[0].shape


def count_flops(model):
    """FLOPs of one forward pass of one image, counting a multiply-add as 2.

    The layers that multiply are counted (everything else is < 1% here): a
    Conv2D costs out_h * out_w * kh * kw * (c / groups) * f multiply-adds, a
    DepthwiseConv2D out_h * out_w * kh * kw * c * multiplier, a
    SeparableConv2D its depthwise part plus out_h * out_w * c * multiplier * f,
    a Dense c * f; a layer called twice counts twice. Any other layer with a
    kernel raises ValueError naming it.
    """
    macs = 0
    for layer, shape in layer_calls(model):
        kind = type(layer)
        if kind in (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D):
            _, out_h, out_w, f = shape
            kernel = layer.depthwise_kernel if kind is layers.SeparableConv2D else layer.kernel
            kh, kw, c, per = kernel.shape      # per: f (Conv2D) or the depth multiplier
            macs += out_h * out_w * kh * kw * c * per
            if kind is layers.SeparableConv2D:
                macs += out_h * out_w * c * per * f
        elif kind is layers.Dense:
            macs += int(np.prod(layer.kernel.shape))
        elif any("kernel" in w.path for w in layer.weights):
            raise ValueError(f"layer {layer.name!r} ({kind.__name__}): its FLOPs are not "
                             "counted; count_flops knows Conv2D, DepthwiseConv2D, "
                             "SeparableConv2D and Dense")
    return int(2 * macs)


def inference_function(model):
    """A compiled function images -> outputs (inference mode), for the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        return lambda x: fn(x).numpy()
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        frozen = [v.value for v in model.non_trainable_variables]
        fn = jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=False)[0])
        return lambda x: np.asarray(jax.block_until_ready(fn(trainable, frozen, x)))
    return lambda x: keras.ops.convert_to_numpy(model(x, training=False))


def time_interleaved(runners, inputs, repeats=5, seed=0, progress=False):
    """Seconds each runner takes for one pass over `inputs`, measured fairly.

    Every runner first makes one untimed pass (warm-up: tracing, compilation,
    allocation). Then each of `repeats` rounds times every runner once, in a
    fresh random order each round, so that drift in the machine's speed (and
    whichever runner happens to go first) does not favour anyone.

    Parameters
    ----------
    runners : dict name -> callable(one input), returning when its work is done
    inputs : sequence of inputs (batches)
    progress : say what it does: a line for the warm-up, then Keras' Progbar
        over the rounds (a bar with ETA in a terminal, a line a round in a log)

    Returns
    -------
    dict name -> list of `repeats` wall-clock seconds
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    # A line at least every cli.HEARTBEAT seconds, the warm-up and long rounds too.
    with (cli.Heartbeat(f"timing {len(runners)} runners: a warm-up (one untimed pass each), "
                        f"then {repeats} rounds") if progress else contextlib.nullcontext()):
        for run in runners.values():
            for x in inputs:
                run(x)
        order = list(runners)
        rng = random.Random(seed)
        seconds = {name: [] for name in order}
        terminal = sys.stdout.isatty()
        bar = keras.utils.Progbar(repeats, verbose=1 if progress and terminal else 0,
                                  unit_name="round")
        began = time.perf_counter()
        for done in range(1, repeats + 1):
            rng.shuffle(order)
            for name in order:
                run = runners[name]
                start = time.perf_counter()
                for x in inputs:
                    run(x)
                seconds[name].append(time.perf_counter() - start)
            bar.update(done)
            if progress and not terminal:   # a log: a line a round, with the time left
                left = (time.perf_counter() - began) / done * (repeats - done)
                print(f"round {done}/{repeats}, {left:.0f} s left", flush=True)
    return seconds


def time_forward(models, images, batch_size=256, repeats=5, seed=0, progress=False):
    """Seconds for one forward pass over `images`, per model, timed side by side
    (see `time_interleaved`) with a compiled inference function each and the
    same batches.

    models : dict name -> keras.Model;  images : ndarray (N, H, W, C)
    Returns dict name -> list of `repeats` wall-clock seconds.
    """
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    functions = {name: inference_function(model) for name, model in models.items()}
    return time_interleaved(functions, batches, repeats, seed, progress)


def summarize_seconds(seconds):
    """{"median", "min", "max", "all"} of a list of timings."""
    return {"median": float(np.median(seconds)), "min": float(min(seconds)),
            "max": float(max(seconds)), "all": [float(f"{s:.4g}") for s in seconds]}


def side_by_side(seconds, baseline, per=1):
    """Each runner's timing summary (divided by `per`, e.g. images per pass)
    and its `ratio`: its median over the `baseline` runner's, both timed in
    the same interleaved rounds (see `time_interleaved`).

    seconds : dict name -> list of seconds, as `time_interleaved` returns
    Returns dict name -> {"median", "min", "max", "all", "ratio"}
    """
    if baseline not in seconds:
        raise ValueError(f"the baseline {baseline!r} was not timed with the others")
    summaries = {name: summarize_seconds([s / per for s in values])
                 for name, values in seconds.items()}
    base = summaries[baseline]["median"]
    return {name: {**summary, "ratio": summary["median"] / base}
            for name, summary in summaries.items()}


def keras_timing(models, images, batch_size=256, repeats=7, seed=0, progress=True):
    """Forward time of each Keras model over `images` at `batch_size` (compiled
    inference functions, interleaved rounds), with ratios to the model named
    "original". Threads: the backend's default, every logical core."""
    return side_by_side(time_forward(models, images, batch_size, repeats, seed, progress),
                        "original")
