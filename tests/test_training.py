"""Training helpers: the lookahead callback against the running-average formula by
hand, batch-norm re-estimation against numpy statistics, the distillation
loss against numpy cross-entropy, and test-time augmentation against views
built by index."""

import keras
import numpy as np
import pytest

from common import cli
from common.training import fit_resumable, Lookahead, Progress
from common.evaluation import predict_flip_translate_tta, recalibrate_batchnorm
from common.finetune import Distillation


class FakeOptimizer:
    iterations = 0


def lookahead_on_one_weight(start_epoch=1, every=2, total_steps=8):
    """A Lookahead attached to a model whose only weight is a 3x3 kernel."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False)])
    model.optimizer = FakeOptimizer()
    callback = Lookahead(total_steps, start_epoch=start_epoch, every=every, decay=0.9, power=2.0)
    callback.set_model(model)
    callback.set_params({"steps": 5})
    return model, callback


def set_weight(model, value):
    model.layers[0].kernel.assign(np.full((3, 3), value, dtype=np.float32))


def weight(model):
    return float(keras.ops.convert_to_numpy(model.layers[0].kernel)[0, 0])


def test_progress_in_a_log_says_the_step_between_epoch_lines(capsys, monkeypatch):
    monkeypatch.setattr(cli, "HEARTBEAT", 0.0)        # every step is "long"
    progress = Progress()
    progress.set_params({"epochs": 2, "steps": 3})
    progress.on_epoch_begin(1)
    for batch in range(3):
        progress.on_train_batch_end(batch, {"loss": 1.0})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "epoch 2/2: step 1/3", "epoch 2/2: step 2/3", "epoch 2/2: step 3/3"]
    assert lines[-1].endswith("ETA 0 s")


def test_lookahead_does_nothing_before_its_start_epoch():
    model, callback = lookahead_on_one_weight(start_epoch=1)
    callback.on_epoch_begin(0)
    set_weight(model, 5.0)
    model.optimizer.iterations = 2
    callback.on_train_batch_end(1)
    callback.on_train_batch_end(4)
    assert weight(model) == 5.0


def test_lookahead_moves_weights_to_the_running_average_every_n_steps():
    model, callback = lookahead_on_one_weight(start_epoch=0, every=2, total_steps=8)
    set_weight(model, 0.0)
    callback.on_epoch_begin(0)                 # average starts at the weights: 0
    expected = 0.0
    for step, value in [(1, 4.0), (2, 4.0), (3, 1.0), (4, 2.0)]:
        set_weight(model, value)               # what an optimizer step would leave
        model.optimizer.iterations = step
        callback.on_train_batch_end(step - 1)
        if step % 2 == 0:                      # rho = 0.9**2 * (step / 8)**2
            rho = 0.81 * (step / 8) ** 2
            expected = rho * expected + (1 - rho) * value
            assert np.isclose(weight(model), expected, rtol=1e-6)
        else:                                  # between updates the weights are left alone
            assert weight(model) == value
    set_weight(model, 9.0)                     # the epoch's last step (5 of 5) ...
    model.optimizer.iterations = 5
    callback.on_train_batch_end(4)
    assert np.isclose(weight(model), expected, rtol=1e-6)  # ... ends on the average


def test_recalibrate_batchnorm_sets_exact_mean_and_batch_variance():
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, size=(40, 5)).astype("float32")
    kernel = rng.normal(size=(5, 4)).astype("float32")
    dense = keras.layers.Dense(4, use_bias=False)
    norm = keras.layers.BatchNormalization(momentum=0.9)
    inner = keras.Sequential([keras.Input((5,)), dense, norm])
    model = keras.Sequential([keras.Input((5,)), inner])  # nested: found too
    dense.kernel.assign(kernel)
    kept = [keras.ops.convert_to_numpy(w) for w in (dense.kernel, norm.gamma, norm.beta)]

    assert recalibrate_batchnorm(model, images, batch_size=10) == 1

    outputs = (images.astype("float64") @ kernel).reshape(4, 10, 4)  # 4 batches of 10
    np.testing.assert_allclose(norm.moving_mean, outputs.mean(axis=(0, 1)), rtol=1e-5)
    # Keras BN uses each batch's biased variance; the re-estimate is their mean.
    np.testing.assert_allclose(norm.moving_variance, outputs.var(axis=1).mean(axis=0),
                               rtol=1e-5)
    assert norm.momentum == 0.9
    for before, after in zip(kept, (dense.kernel, norm.gamma, norm.beta)):
        np.testing.assert_array_equal(before, keras.ops.convert_to_numpy(after))


def softmax_net(seed):
    """A batch-norm-free classifier: the same outputs in training and inference."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(10, activation="softmax")])


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_distillation_adds_the_teachers_cross_entropy_while_training(temperature):
    student, teacher = softmax_net(0), softmax_net(1)
    trainer = Distillation(keras.layers.Identity(), student, teacher, weight=0.3,
                           temperature=temperature)
    x = np.random.default_rng(0).normal(size=(6, 4, 4, 3)).astype("float32")
    probabilities = keras.ops.convert_to_numpy(trainer(x, training=True))
    p_student = keras.ops.convert_to_numpy(student(x)).astype("float64")
    p_teacher = keras.ops.convert_to_numpy(teacher(x)).astype("float64")

    def soften(p):  # softmax(logits / T) = p**(1/T), renormalised
        p = p ** (1 / temperature)
        return p / p.sum(axis=1, keepdims=True)
    expected = 0.3 * temperature ** 2 * np.mean(
        -np.sum(soften(p_teacher) * np.log(soften(p_student)), axis=1))
    np.testing.assert_allclose(probabilities, p_student, rtol=1e-6)
    np.testing.assert_allclose(float(trainer.losses[0]), expected, rtol=1e-5)
    trainer(x, training=False)
    assert not trainer.losses  # inference: the student alone, no extra loss


def test_fine_tune_with_a_teacher_trains_the_student_only():
    from common.pruning import KeepPruned, global_masks, kernels_of
    from common.finetune import fine_tune
    from tests.conftest import tiny_classifier
    student, teacher = tiny_classifier(0), tiny_classifier(1)
    masks = global_masks(kernels_of(student), 0.8)
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(40, 32, 32, 3)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 40)]
    teacher_weights, before = teacher.get_weights(), kernels_of(student)
    fine_tune(student, (x, y), (x, y), epochs=2, batch_size=8, peak_learning_rate=0.5,
              teacher=teacher, callbacks=[KeepPruned(masks)], verbose=0)
    for kept, now in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(kept, now)
    kernels = kernels_of(student)
    for name, mask in masks.items():
        assert np.all(kernels[name][~mask] == 0)
        assert not np.array_equal(kernels[name][mask], before[name][mask])


def test_flip_translate_tta_weights_six_views_as_airbench():
    rng = np.random.default_rng(0)
    images = rng.random((4, 5, 6, 2)).astype(np.float32)  # not square: rows and columns stay apart
    model = keras.Sequential([keras.Input((5, 6, 2)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])

    def reflect(index, size):  # -1 -> 1 and size -> size - 2, as reflect padding does
        return np.abs(size - 1 - np.abs(size - 1 - index))

    def shifted(step):  # view[i, j] = images[i + step, j + step], borders reflected
        rows, cols = reflect(np.arange(5) + step, 5), reflect(np.arange(6) + step, 6)
        return images[:, rows][:, :, cols]

    def predict(x):
        return keras.ops.convert_to_numpy(model(x))

    views = [images, shifted(-1), shifted(1)]
    expected = sum(weight * (predict(view) + predict(view[:, :, ::-1]))
                   for weight, view in zip((1 / 4, 1 / 8, 1 / 8), views))
    np.testing.assert_allclose(predict_flip_translate_tta(model, images, batch_size=3),
                               expected, atol=1e-6)


def test_fit_resumable_evaluates_every_nth_epoch_and_the_last(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.random((8, 3)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy", metrics=["accuracy"])
    records = []
    fit_resumable(model, (x, y), (x, y), epochs=5, batch_size=4, evaluate_every=2,
                  evaluated_on="test", backup_dir=str(tmp_path / "backup"),
                  on_record=records.append)
    tested = [r["epoch"] for r in records if r["test_accuracy"] is not None]
    assert tested == [2, 4, 5]
    lines = capsys.readouterr().out.splitlines()  # not a terminal: one line per epoch
    assert len(lines) == 5
    assert [line.split(":")[0] for line in lines[:2]] == ["epoch 1/5, ETA 0 min",
                                                          "epoch 2/5, ETA 0 min"]
    assert all("2/2" in line for line in lines)
    assert "test_accuracy" in lines[1] and "test_accuracy" not in lines[0]
    assert not any("val_" in line for line in lines)
    assert all(r["test_loss"] is None for r in records if r["epoch"] not in tested)

@pytest.mark.parametrize("momentum, reestimated", [(0.99, True), (0.6, False)])
def test_a_short_fine_tune_ends_with_batch_norm_statistics_of_its_weights(momentum,
                                                                          reestimated):
    """0.99 ** 10 steps leaves 90% of the old statistics: re-estimated, the
    moving mean is the batch norm's input mean over the training images,
    computed here with numpy; 0.6 ** 10 leaves 0.6%: left as training made it."""
    from common.finetune import fine_tune
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=momentum, name="bn")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(x)))
    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 1.0, size=(40, 4, 4, 3)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, 40)]
    fine_tune(model, (images, labels), None, epochs=1, batch_size=4, max_shift=0,
              precision="float32", verbose=0)
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv").kernel)[0, 0]
    mean = (images.reshape(-1, 3).astype("float64") @ kernel).mean(axis=0)
    moving = keras.ops.convert_to_numpy(model.get_layer("bn").moving_mean)
    assert np.allclose(moving, mean, rtol=1e-4, atol=1e-5) == reestimated
