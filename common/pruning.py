"""Magnitude pruning of Conv2D and Dense kernels: masks, thresholds, and a callback
that keeps pruned weights at exactly zero while a model trains.

Biases and batch-norm parameters are never pruned: they are few, and zeroing
them shifts activations instead of removing connections.
"""

import contextlib
import gzip
import io

import keras
import numpy as np
from keras import layers

from common import evaluation, finetune
from common.models import leaf_layers


def prunable_layers(model):
    """Conv2D and Dense layers of `model`, in depth order (nested models opened)."""
    return [layer for layer in leaf_layers(model) if type(layer) in (layers.Conv2D, layers.Dense)]


def _smallest_first(values):
    """Indices of `values` (flattened) by |value|, ties broken by position (stable)."""
    return np.argsort(np.abs(values).ravel(), kind="stable")


def magnitude_mask(kernel, rate):
    """Boolean mask keeping all but the round(rate * size) smallest-|w| weights.

    Exactly round(rate * kernel.size) entries are False; among equal magnitudes
    the earlier (flattened, C-order) ones are pruned first.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"prune rate must be in [0, 1), got {rate}")
    kernel = np.asarray(kernel)
    mask = np.ones(kernel.size, dtype=bool)
    mask[_smallest_first(kernel)[:round(rate * kernel.size)]] = False
    return mask.reshape(kernel.shape)


def uniform_masks(kernels, rate):
    """The same prune rate in every layer. kernels: dict name -> array."""
    return {name: magnitude_mask(kernel, rate) for name, kernel in kernels.items()}


def global_masks(kernels, sparsity):
    """One magnitude threshold across all layers: prune the round(sparsity * total)
    smallest-|w| weights of all kernels together (ties: earlier layer, then earlier
    position, first). Layers with small weights lose more than others."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    names = list(kernels)
    flat = np.concatenate([np.asarray(kernels[n]).ravel() for n in names])
    keep = np.ones(flat.size, dtype=bool)
    keep[_smallest_first(flat)[:round(sparsity * flat.size)]] = False
    bounds = np.cumsum([0] + [np.asarray(kernels[n]).size for n in names])
    return {n: keep[lo:hi].reshape(np.shape(kernels[n]))
            for n, lo, hi in zip(names, bounds[:-1], bounds[1:])}


def kernels_of(model, names=None):
    """dict layer name -> kernel as a numpy array (a copy), for the prunable layers."""
    return {layer.name: keras.ops.convert_to_numpy(layer.kernel)
            for layer in prunable_layers(model) if names is None or layer.name in names}


def apply_masks(model, masks):
    """Zero the masked-out kernel weights of `model` in place.

    masks : dict layer name -> boolean array of the kernel's shape
    """
    by_name = {layer.name: layer for layer in prunable_layers(model)}
    for name, mask in masks.items():
        kernel = by_name[name].kernel
        kernel.assign(kernel * keras.ops.cast(mask, kernel.dtype))


@contextlib.contextmanager
def pruned(model, masks):
    """Within the block, `model` has `masks` applied; afterwards every kernel is
    restored bit-exactly (the originals are kept, not recomputed)."""
    saved = kernels_of(model, set(masks))
    by_name = {layer.name: layer for layer in prunable_layers(model)}
    try:
        apply_masks(model, masks)
        yield model
    finally:
        for name, kernel in saved.items():
            by_name[name].kernel.assign(kernel)


def conv_patches(inputs, conv):
    """The input patches a Conv2D multiplies by its kernel, one row per output pixel.

    inputs (N, H, W, C) -> (N * H' * W', kh * kw * C), columns in the order of
    ``kernel.reshape(-1, f)``, so that ``conv_patches(x, conv) @ kernel.reshape(-1, f)``
    is the conv's output before bias and activation (Keras' own patches, its
    padding included).
    """
    if conv.dilation_rate != (1, 1) or conv.groups != 1 or conv.data_format != "channels_last":
        raise ValueError(f"{conv.name}: only channels-last, undilated, ungrouped convs")
    patches = keras.ops.image.extract_patches(inputs, tuple(conv.kernel_size),
                                              strides=tuple(conv.strides), padding=conv.padding)
    patches = keras.ops.convert_to_numpy(patches)
    return patches.reshape(-1, patches.shape[-1])


def refit_kept_weights(model, masks, dense_kernels, images, damping=1e-3, chunk=250):
    """Least-squares refit of the weights that pruning kept (in place, no training).

    Layer by layer in depth order, with X the inputs that the pruned model
    (refitted so far) feeds the layer on `images`: the kept weights of each
    output channel j become  argmin_w ||X_S w - X w_j||^2 + lam ||w - w_jS||^2,
    S the kept inputs of j, w_j its dense weights and lam = damping * mean(diag(X'X)):
    the layer reproduces its dense output as well as its mask allows, and
    where the images say nothing (a dead input) the weight stays as magnitude
    pruning left it. Pruned weights stay zero.
    (The reconstruction step of SparseGPT / Optimal Brain Compression, with
    the mask chosen by magnitude beforehand.)

    Parameters
    ----------
    model : keras.Model, pruned by `masks`, its layers at the top level
    masks : dict layer name -> boolean kernel mask
    dense_kernels : dict layer name -> kernel before pruning (see `kernels_of`)
    images : calibration inputs of the model, e.g. 2,000 training images
    """
    for layer in prunable_layers(model):
        if layer.name not in masks or np.all(masks[layer.name]):  # nothing pruned: keep as is
            continue
        if layer not in model.layers:
            raise ValueError(f"{layer.name}: refit needs the layers at the model's top level")
        inputs = keras.Model(model.inputs, layer.input).predict(images, batch_size=500,
                                                                verbose=0)
        dense = np.asarray(dense_kernels[layer.name], np.float64)
        weights = dense.reshape(-1, dense.shape[-1])             # (inputs per output, f)
        kept = np.asarray(masks[layer.name]).reshape(weights.shape)
        gram = np.zeros((len(weights), len(weights)))
        for start in range(0, len(inputs), chunk):
            x = inputs[start:start + chunk].astype(np.float64)
            x = conv_patches(x, layer) if isinstance(layer, layers.Conv2D) \
                else x.reshape(-1, x.shape[-1])
            gram += x.T @ x
        scale = np.mean(np.diag(gram))
        ridge = damping * scale if scale > 0 else 1.0             # no signal: keep w_jS
        target = gram @ weights + ridge * weights                 # X'X w_j + lam w_j, every j
        gram += ridge * np.eye(len(gram))
        refitted = np.zeros_like(weights)
        for j in range(weights.shape[1]):
            s = kept[:, j]
            if s.any():
                refitted[s, j] = np.linalg.solve(gram[np.ix_(s, s)], target[s, j])
        layer.kernel.assign(refitted.reshape(dense.shape).astype(np.float32))


class KeepPruned(keras.callbacks.Callback):
    """Re-apply fixed masks after every training step, so that pruned weights are
    exactly zero whenever the model is used (the optimizer's momentum would
    otherwise move them). masks: dict layer name -> boolean array."""

    def __init__(self, masks):
        super().__init__()
        self.masks = masks

    def on_train_begin(self, logs=None):
        apply_masks(self.model, self.masks)

    def on_train_batch_end(self, batch, logs=None):
        apply_masks(self.model, self.masks)


class GradualPruning(KeepPruned):
    """Global magnitude pruning that tightens while the model trains (Zhu &
    Gupta 2017): the sparsity rises from `initial_sparsity` to `final_sparsity`
    on a cubic schedule over the first `ramp_steps` steps, the masks re-chosen
    from the current kernels every `every` steps, then fixed.

    The kept weights adapt while their neighbours go, instead of all the loss
    landing at once. A weight once pruned stays zero (the zeros are always the
    smallest magnitudes), so the masks only shrink. `layer_names` are the
    layers pruned together (e.g. those of `prunable_layers(model)`): the model
    being fit may hold others, such as a distillation teacher's.
    """

    def __init__(self, layer_names, final_sparsity, ramp_steps, initial_sparsity=0.0,
                 every=5):
        super().__init__(masks={})
        for name, value in (("initial_sparsity", initial_sparsity),
                            ("final_sparsity", final_sparsity)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if initial_sparsity > final_sparsity:
            raise ValueError(f"initial_sparsity {initial_sparsity} is above "
                             f"final_sparsity {final_sparsity}")
        if ramp_steps < 0 or every < 1:
            raise ValueError(f"need ramp_steps >= 0 and every >= 1, got {ramp_steps}, {every}")
        self.layer_names = set(layer_names)
        self.initial, self.final = initial_sparsity, final_sparsity
        self.ramp_steps, self.every = ramp_steps, every

    def sparsity_at(self, step):
        """final + (initial - final) * (1 - step / ramp_steps)**3: fast at first,
        while many small weights are left, slow near the end."""
        done = 1.0 if step >= self.ramp_steps else step / self.ramp_steps
        return self.final + (self.initial - self.final) * (1 - done) ** 3

    def _choose_masks(self, step):
        self.masks = global_masks(kernels_of(self.model, self.layer_names),
                                  self.sparsity_at(step))

    def on_train_begin(self, logs=None):
        self.masks = None  # chosen at the first step: a resumed fit restores weights first

    def on_train_batch_begin(self, batch, logs=None):
        if self.masks is None:
            self._choose_masks(int(self.model.optimizer.iterations))
            apply_masks(self.model, self.masks)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step <= self.ramp_steps and (step % self.every == 0 or step == self.ramp_steps):
            self._choose_masks(step)
        super().on_train_batch_end(batch, logs)


def sparsity(model):
    """Fraction of the prunable kernels' weights that are exactly zero."""
    kernels = kernels_of(model)
    total = sum(k.size for k in kernels.values())
    return float(sum(np.count_nonzero(k == 0) for k in kernels.values()) / total)


def sparse_bytes(model):
    """Bytes of the model's weights in a simple sparse format, losslessly:
    per array, a 1-bit-per-weight occupancy mask plus the non-zero float32
    values, all in one compressed .npz. Dense arrays are stored as they are."""
    arrays = {}
    for i, weight in enumerate(model.weights):
        values = keras.ops.convert_to_numpy(weight)
        nonzero = values != 0
        if nonzero.mean() < 0.5:
            arrays[f"{i}_mask"] = np.packbits(nonzero.ravel())
            arrays[f"{i}_values"] = values[nonzero]
        else:
            arrays[f"{i}_dense"] = values
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getbuffer().nbytes


def model_sizes(model, path):
    """Save `model` (no optimizer) to `path` and measure it on disk three ways.

    Returns dict: keras_bytes (the .keras file), gzip_bytes (that file gzipped;
    zeros compress), sparse_bytes (see `sparse_bytes`).
    """
    model.save(path)
    raw = open(path, "rb").read()
    return {"keras_bytes": len(raw),
            "gzip_bytes": len(gzip.compress(raw, compresslevel=9)),
            "sparse_bytes": sparse_bytes(model)}



def pruned_accuracy(model, masks, data, recalibration_images=None):
    """Accuracy on `data` with `masks` applied (and the batch norms re-estimated
    on `recalibration_images`, if given) and the non-zero weights then; every
    weight of `model`, batch-norm statistics included, is restored after."""
    saved = model.get_weights()
    try:
        apply_masks(model, masks)
        if recalibration_images is not None:
            evaluation.recalibrate_batchnorm(model, recalibration_images)
        nonzero = int(sum(np.count_nonzero(keras.ops.convert_to_numpy(w))
                          for w in model.weights))
        return evaluation.accuracy_on(model, data), nonzero
    finally:
        model.set_weights(saved)


def fine_tune_pruned(model, teacher, sparsity, train, validation, recipe, gradual, seed=0,
                     backup_dir=None):
    """Fine-tune `model` (in place) while pruning it gradually to `sparsity`
    (global magnitude): from `1 - gradual["start_kept_factor"] * (1 - sparsity)`
    to the final masks over `gradual["ramp_epochs"]`, re-chosen every
    `gradual["mask_every"]` steps, then with the masks fixed; distilling from
    `teacher` with `recipe` (see `finetune.fine_tune`). The batch norms are
    re-estimated on 10,000 training images at the starting masks. With a
    `backup_dir`, an interrupted call resumes (see `finetune.fine_tune`).

    Returns the per-epoch records.
    """
    start = max(0.0, 1 - gradual["start_kept_factor"] * (1 - sparsity))
    steps_per_epoch = -(-len(train[0]) // recipe["batch_size"])
    schedule = GradualPruning(list(kernels_of(model)), sparsity,
                              round(gradual["ramp_epochs"] * steps_per_epoch),
                              initial_sparsity=start, every=gradual["mask_every"])
    apply_masks(model, global_masks(kernels_of(model), start))
    evaluation.recalibrate_batchnorm(model, train[0][:10_000])
    return finetune.fine_tune(model, train, validation, teacher=teacher, seed=seed,
                              callbacks=[schedule], backup_dir=backup_dir, **recipe)
