"""Partial FC v2 (An et al., CVPR 2022): train a margin-loss head over millions of classes by sampling its centres.

Every training step of a `PartialFCModel` draws the classes of the step: the classes present in the (global) batch,
always kept, plus a uniform sample without replacement of the other classes, `max(int(sample_rate * classes),
positives)` in all (`sample_classes`). The head (`heads.NormDense` with `sample_rate`, centres stored as rows)
computes cosines against those centres only, the margin loss is applied to them with the labels moved to the
sample's columns (`labels_in_sample`), and only the sampled rows of the head and of its optimizer state (momentum;
Adam's first and second moments) are updated (`update_sampled_rows`): the other centres and their state are left
untouched, so a step's cost grows with the sample, not the class count.

The sample of step `t` is drawn from the stateless seed `[sample_seed, t]` (`t` = the optimizer's iteration count),
so a resumed run draws the samples of an uninterrupted one, and under a `tf.distribute` strategy every replica
draws the same sample from the classes of all replicas' labels: one step equals single-device training on the
global batch. With `sample_rate=1.0` every class is sampled, and a step equals the full head's step.

Memory of the head: `classes × emb × 4 bytes × (1 + optimizer slots)` (slots: 1 for SGD with momentum, 2 for
Adam/AdamW), plus per step `sample × (batch + emb) × 4 bytes` for the sampled logits and rows, against
`classes × (batch + emb) × 4` for the full head.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import keras
import tensorflow as tf

import keras_compat
from heads import NormDense

SUPPORTED_OPTIMIZERS = (keras.optimizers.SGD, keras.optimizers.Adam)  # AdamW is an Adam
UNSUPPORTED_OPTIMIZER_OPTIONS = ("clipnorm", "clipvalue", "global_clipnorm", "use_ema", "gradient_accumulation_steps")


def sample_size(classes, sample_rate):
    """Number of classes a step samples at least: `int(sample_rate * classes)`, at least 1, at most `classes`."""
    return min(int(classes), max(1, int(sample_rate * classes)))


def positive_class_mask(labels, classes):
    """Boolean (classes,) mask of the classes present in `labels`: one-hot or soft (batch, classes) rows (every
    non-zero entry counts, e.g. both classes of a mixup sample) or integer (batch,) class indices. Under a
    `tf.distribute` strategy the mask covers the labels of every replica."""
    if labels.shape.rank == 1:
        counts = tf.math.bincount(tf.cast(labels, tf.int32), minlength=classes, maxlength=classes, dtype=tf.float32)
    else:
        counts = tf.reduce_sum(tf.cast(tf.not_equal(labels, 0), tf.float32), axis=0)
    counts = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, counts)
    return counts > 0


def sample_classes(positive_mask, num_sample, seed, valid=None):
    """Sorted int32 class indices of one step: every class of `positive_mask` ((classes,) bool) plus uniformly
    drawn others, `max(num_sample, positives)` in all, drawn from the stateless `seed` ((2,) int). With `valid`
    (int scalar), only the first `valid` classes can be drawn (a padded shard) and at most `valid` are."""
    scores = tf.random.stateless_uniform(tf.shape(positive_mask), seed)  # in [0, 1)
    if valid is not None:
        scores = tf.where(tf.range(tf.size(positive_mask)) < valid, scores, -1.0)
    scores = tf.where(positive_mask, 2.0, scores)
    count = tf.maximum(num_sample, tf.reduce_sum(tf.cast(positive_mask, tf.int32)))
    count = count if valid is None else tf.minimum(count, valid)
    return tf.sort(tf.math.top_k(scores, count, sorted=False).indices)


def labels_in_sample(labels, class_ids):
    """The labels over the sampled classes: (batch, sample) float32 rows, the columns `class_ids` of one-hot / soft
    `labels` (batch, classes), or the one-hot rows of integer `labels` (batch,) at their place in `class_ids`."""
    if labels.shape.rank == 1:
        positions = tf.searchsorted(class_ids, tf.cast(labels, class_ids.dtype))
        return tf.one_hot(positions, tf.shape(class_ids)[0], dtype=tf.float32)
    return tf.cast(tf.gather(labels, class_ids, axis=1), tf.float32)


def one_hot_labels(labels, classes):
    """One-hot float32 (batch, classes) rows of integer `labels` (batch,); other labels are returned as they are."""
    return tf.one_hot(tf.cast(labels, tf.int32), classes) if labels.shape.rank == 1 else labels


def sampled_row_ids(class_ids, loss_top_k):
    """Row indices (sample * k,) of the head's `w_rows` holding the centres of `class_ids`: rows `c*k .. c*k+k-1`
    are the `loss_top_k` sub-centres of class `c`."""
    offsets = tf.range(loss_top_k, dtype=class_ids.dtype)
    return tf.reshape(class_ids[:, None] * loss_top_k + offsets[None, :], [-1])


def step_seed(sample_seed, step):
    """The (2,) int64 stateless seed `[sample_seed, step]` of training step `step`."""
    return tf.stack([tf.constant(sample_seed, tf.int64), tf.cast(step, tf.int64)])


# ----------------------------------------------------------------------------------------------------------------
# Sparse optimizer updates: the Keras optimizer's formulas applied to the sampled rows only


def check_optimizer(optimizer):
    """TypeError / ValueError unless `optimizer` is an SGD, Adam or AdamW without the options that couple all
    variables (clipping, EMA, gradient accumulation) or amsgrad, which the sparse head update does not replicate."""
    if not isinstance(optimizer, SUPPORTED_OPTIMIZERS):
        raise TypeError(f"Partial FC trains with SGD, Adam or AdamW; got {type(optimizer).__name__} (a mixed-precision "
                        "LossScaleOptimizer is not supported either)")
    used = [name for name in UNSUPPORTED_OPTIMIZER_OPTIONS if getattr(optimizer, name, None)]
    used += ["amsgrad"] if getattr(optimizer, "amsgrad", False) else []
    if used:
        raise ValueError(f"Partial FC: optimizer options {used} are not supported by the sparse head update")


def sgd_rows(optimizer, rows, grads, slots, learning_rate, step):
    """New `(rows, slots)` after one Keras SGD step on gathered rows (momentum, Nesterov as `SGD.update_step`)."""
    del step
    if "momentum" not in slots:
        return rows - grads * learning_rate, {}
    momentum = slots["momentum"] * optimizer.momentum - grads * learning_rate
    if optimizer.nesterov:
        return rows + (momentum * optimizer.momentum - grads * learning_rate), {"momentum": momentum}
    return rows + momentum, {"momentum": momentum}


def adam_rows(optimizer, rows, grads, slots, learning_rate, step):
    """New `(rows, slots)` after one Keras Adam step on gathered rows at 1-based `step` (`Adam.update_step`)."""
    beta_1_power = tf.pow(tf.cast(optimizer.beta_1, rows.dtype), step)
    beta_2_power = tf.pow(tf.cast(optimizer.beta_2, rows.dtype), step)
    alpha = learning_rate * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    momentum = slots["momentum"] + (grads - slots["momentum"]) * (1 - optimizer.beta_1)
    velocity = slots["velocity"] + (tf.square(grads) - slots["velocity"]) * (1 - optimizer.beta_2)
    rows = rows - (momentum * alpha) / (tf.sqrt(velocity) + optimizer.epsilon)
    return rows, {"momentum": momentum, "velocity": velocity}


def updated_rows(optimizer, variable, slots, row_ids, grads):
    """Gather `variable`'s rows `row_ids` and those of its optimizer `slots` ({"momentum": m, "velocity": v}, as
    `keras_compat.optimizer_slots` names them), apply weight decay (as the Keras optimizer: `w -= w *
    weight_decay * lr`) and the optimizer's step with `grads` (rows, emb); returns the new values as
    `(variable, rows)` pairs."""
    learning_rate = tf.cast(optimizer.learning_rate, variable.dtype)
    rows = tf.gather(variable.value, row_ids)
    if keras_compat.uses_weight_decay(optimizer, variable):
        rows = rows - rows * tf.cast(optimizer.weight_decay, rows.dtype) * learning_rate
    gathered = {name: tf.gather(slot.value, row_ids) for name, slot in slots.items()}
    step_rows = adam_rows if isinstance(optimizer, keras.optimizers.Adam) else sgd_rows
    step = tf.cast(optimizer.iterations + 1, variable.dtype)
    rows, new_slots = step_rows(optimizer, rows, grads, gathered, learning_rate, step)
    return [(variable, rows), *((slots[name], value) for name, value in new_slots.items())]


def write_updated_rows(optimizer, updates, row_ids):
    """Scatter each `(variable, rows)` of `updates` into the rows `row_ids` of its variable (in place: the whole
    variable is never read, which would make TensorFlow copy it before the scatter)."""
    for target, rows in updates:
        optimizer.assign(target, tf.IndexedSlices(rows, row_ids))


def update_sampled_rows(optimizer, variable, row_ids, grads):
    """Apply one optimizer step to the rows `row_ids` of `variable` only, from their gradient `grads` (rows, emb),
    and to the same rows of its optimizer state; under a `tf.distribute` strategy the gradients are summed over
    the replicas first and every copy of the variable gets the same update. Call in a replica context (a train
    step), before the optimizer's own `apply` (which advances `iterations`)."""
    context = tf.distribute.get_replica_context()
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)

    def write_rows(strategy, row_ids, grads):
        def update(_, row_ids, grads):
            slots = keras_compat.optimizer_slots(optimizer, variable)
            write_updated_rows(optimizer, updated_rows(optimizer, variable, slots, row_ids, grads), row_ids)

        strategy.extended.update(variable.value, update, args=(row_ids, grads), group=False)

    context.merge_call(write_rows, args=(row_ids, grads))


# ----------------------------------------------------------------------------------------------------------------
# The training model


def sampled_head_of(model):
    """The last `NormDense` layer of `model` with `sample_rate` set; ValueError when there is none."""
    heads = [layer for layer in model.layers if isinstance(layer, NormDense) and layer.is_sampled]
    if not heads:
        raise ValueError(f"{model.name}: a PartialFCModel needs a NormDense head with sample_rate set")
    return heads[-1]


def replace_last(structure, value):
    """`structure` (a tensor, or a list / tuple of the model's per-output values) with its last entry `value`."""
    if isinstance(structure, (list, tuple)):
        return [*structure[:-1], value]
    return value


def last_entry(structure):
    """The last entry of a list / tuple of per-output values, or the value itself."""
    return structure[-1] if isinstance(structure, (list, tuple)) else structure


@keras.saving.register_keras_serializable(package="keras_insightface")
class PartialFCModel(keras.Model):
    """A functional training model whose last output is a Partial FC head (`NormDense(sample_rate=...)`): `fit`
    trains it with sampled class centres and sparse head updates (see the module docstring). Built like any
    functional model, `PartialFCModel(inputs, outputs)`; everything else (`predict`, `evaluate`, saving) is the
    functional model's, with the full head.

    Labels of the head output: one-hot / soft (batch, classes) rows, or integer (batch,) classes (these save the
    (batch, classes) label tensor at millions of classes). The compiled loss of the head output receives (batch,
    sample) labels and cosines; compiled metrics are computed over the sample. Optimizer: SGD, Adam or AdamW
    (`check_optimizer`).
    """

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        head = sampled_head_of(self)
        check_optimizer(self.optimizer)
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        class_ids = self.sample_of_step(head, last_entry(y))
        row_ids = sampled_row_ids(class_ids, head.loss_top_k)
        y = replace_last(y, labels_in_sample(last_entry(y), class_ids))
        others = [variable for variable in self.trainable_variables if variable is not head.w_rows]
        with tf.GradientTape() as tape:
            rows = tf.gather(head.w_rows.value, row_ids)
            y_pred = self.outputs_with_sampled_head(x, head, rows)
            loss = self.sampled_loss(x, y, y_pred, sample_weight, head, rows)
        grads = tape.gradient(loss, [*others, rows])
        update_sampled_rows(self.optimizer, head.w_rows, row_ids, grads[-1])
        self.optimizer.apply(grads[:-1], others)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' `compute_loss`, with integer labels of the head output one-hot encoded over its classes first
        (Keras builds the compiled loss from the full head's shapes, and `evaluate` computes it there)."""
        y = replace_last(y, one_hot_labels(last_entry(y), sampled_head_of(self).units))
        return super().compute_loss(x, y, y_pred, sample_weight, training=training)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras' `compute_metrics`, with integer labels one-hot encoded as in `compute_loss`."""
        y = replace_last(y, one_hot_labels(last_entry(y), sampled_head_of(self).units))
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def sample_of_step(self, head, labels):
        """The sorted class indices of this step (drawn from `[head.sample_seed, optimizer.iterations]`)."""
        positives = positive_class_mask(labels, head.units)
        seed = step_seed(head.sample_seed, self.optimizer.iterations)
        return sample_classes(positives, sample_size(head.units, head.sample_rate), seed)

    def outputs_with_sampled_head(self, x, head, rows):
        """The model's outputs on `x` in training mode, the head's replaced by its output over the sampled `rows`
        (a list when the model has several outputs)."""
        outputs = keras_compat.call_with_layer_replaced(self, x, head, lambda inputs, **_: inputs, training=True)
        outputs[-1] = head.sampled_output(outputs[-1], rows)
        return outputs if len(outputs) > 1 else outputs[0]

    def sampled_loss(self, x, y, y_pred, sample_weight, head, rows):
        """The compiled loss plus the other layers' regularisation and the head regulariser on the sampled
        `rows` only; the loss tracker is updated as Keras' own train step does."""
        loss = self.compute_loss(x, y, y_pred, sample_weight, training=True)
        if head.kernel_regularizer is not None:
            loss = loss + head.kernel_regularizer(rows) / tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.shape(keras.tree.flatten(x)[0])[0]
        keras_compat.loss_tracker(self).update_state(loss * tf.distribute.get_strategy().num_replicas_in_sync,
                                                     sample_weight=batch)
        return self.optimizer.scale_loss(loss)
