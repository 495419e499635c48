"""Model-parallel Partial FC: the class centres sharded over the replicas of a `tf.distribute` strategy.

With N replicas, replica `r` holds the centres of classes `[r·S, (r+1)·S)`, `S = ceil(classes / N)`, in
`ShardedNormDense.w_rows`, a variable synchronised on read (each replica keeps its own value), with its optimizer
state beside it; no device holds the whole head. A training step of `ShardedPartialFCModel`:

1. every replica computes its local batch's embeddings; `all_gather` gives every replica the global batch's
   embeddings and labels;
2. each replica samples its own shard (the shard's classes present in the global batch plus a uniform sample of
   the others, `sample_rate` of the shard) and computes the margin logits of the global batch against them;
3. the softmax cross-entropy is combined across replicas: the maximum logit of every sample (`all_gather`), the sum
   of its exponentials and its target logit (`all_reduce`), so every replica gets the global batch's loss;
4. gradients flow back through the collectives: each replica's backbone gets the gradient of its own samples
   (then all-reduced by the Keras optimizer as usual) and each shard the gradient of the global batch, applied
   to its sampled rows only (the sparse update of `partial_fc`), without any exchange of centres.

With `sample_rate=1.0` a step equals single-device training with the full head on the global batch. Saving gathers
the shards: a checkpoint holds every centre (and its optimizer state) in the rows layout of
`NormDense(sample_rate=...)` and loads under any number of replicas; `set_all_rows(rows)` takes the centres of a
`NormDense(sample_rate=...)` head (`get_weights()[0]`).

Losses: those whose margin is applied to each target logit alone (`ArcfaceLoss`, `CosFaceLoss`, `AirFaceLoss`,
`ArcfaceLossSimple`), without label smoothing. Labels: integer, or one-hot (hard). One output (no attached
embedding losses). The head's optimizer state lives in the layer (`optimizer_slots`), not in the optimizer.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import keras
import numpy as np
import tensorflow as tf

import keras_compat
import losses
import partial_fc
from heads import NormDense

SHARDED_LOSSES = (losses.ArcfaceLoss, losses.CosFaceLoss, losses.AirFaceLoss, losses.ArcfaceLossSimple)
SLOT_NAMES = {"sgd": ("momentum",), "sgd without momentum": (), "adam": ("momentum", "velocity")}


def optimizer_slot_names(optimizer):
    """The slot names `partial_fc.updated_rows` needs for `optimizer`: ("momentum",) for SGD with momentum, () without,
    ("momentum", "velocity") for Adam / AdamW."""
    if isinstance(optimizer, keras.optimizers.Adam):
        return SLOT_NAMES["adam"]
    return SLOT_NAMES["sgd"] if optimizer.momentum else SLOT_NAMES["sgd without momentum"]


def replica_context():
    """`(replica context, number of replicas, this replica's index)`; the default context outside a strategy."""
    context = tf.distribute.get_replica_context()
    return context, context.num_replicas_in_sync, context.replica_id_in_sync_group


def local_values(variable, strategy):
    """The per-replica tf.Variables of a Keras variable synchronised on read, created under `strategy` (one
    variable for the default strategy)."""
    return strategy.experimental_local_results(variable.value)


@keras.saving.register_keras_serializable(package="keras_insightface")
class ShardedNormDense(NormDense):
    """A Partial FC head whose class centres are split over the replicas (see the module docstring).

    Args:
        units: number of classes.
        kernel_regularizer: regulariser of the centres, applied to the sampled rows of each shard.
        loss_top_k: sub-centres per class (rows `c*k .. c*k+k-1` of class `c`, as `NormDense`).
        sample_rate: fraction of each shard's classes a step samples, in (0, 1].
        sample_seed: int seed of the per-step samples (replica `r` of step `t` draws from `[seed, t]` folded with
            `r`; one replica draws exactly as `partial_fc.PartialFCModel`).
        optimizer_slots: names of the optimizer state kept per centre (`optimizer_slot_names(optimizer)`):
            ("momentum",) for SGD with momentum, ("momentum", "velocity") for Adam / AdamW.
        num_shards: replicas the centres are split over (default: the strategy's replicas at build time).
        **kwargs: Layer arguments (`name`, `dtype`).

    Weights (per replica, synchronised on read): `norm_dense_w_shard` (S*k, emb) and one (S*k, emb) variable
    per optimizer slot. Called as a layer, it returns the cosines of every class, gathered from all shards.
    """

    def __init__(self, units=1000, kernel_regularizer=None, loss_top_k=1, sample_rate=1.0, sample_seed=0,
                 optimizer_slots=("momentum",), num_shards=None, **kwargs):
        super().__init__(units, kernel_regularizer, loss_top_k, sample_rate=sample_rate, sample_seed=sample_seed,
                         **kwargs)
        self.optimizer_slots, self.num_shards = tuple(optimizer_slots), num_shards

    @property
    def shard_classes(self):
        """Classes per shard, `ceil(units / num_shards)` (the last shard is padded with classes never sampled)."""
        return -(-self.units // self.num_shards)

    def build(self, input_shape):
        self.strategy = tf.distribute.get_strategy()
        self.num_shards = self.num_shards or self.strategy.num_replicas_in_sync
        shape = (self.shard_classes * self.loss_top_k, int(input_shape[-1]))
        self.w_rows = self.shard_variable("norm_dense_w_shard", shape)
        self.slots = {name: self.shard_variable(name, shape) for name in self.optimizer_slots}
        self.set_all_rows(self.initial_rows(int(input_shape[-1])))

    def shard_variable(self, name, shape):
        """A float32 variable of `shape` kept per replica (synchronised on read), zeros."""
        return keras.Variable(np.zeros(shape, "float32"), trainable=False, name=name, synchronization="on_read",
                              aggregation="only_first_replica")

    def initial_rows(self, emb):
        """The initial centres of every class, (units*k, emb): the same draw as `NormDense(sample_rate=...)`."""
        return keras.ops.convert_to_numpy(self.transposed_kernel_initializer((self.units * self.loss_top_k, emb)))

    def shard_bounds(self, shard):
        """`(first row, end row)` of `shard` in the rows of every class (the end clipped to units*k)."""
        rows = self.shard_classes * self.loss_top_k
        return shard * rows, min((shard + 1) * rows, self.units * self.loss_top_k)

    def shards(self, variable=None):
        """The per-replica values of `variable` (default `w_rows`), in shard order."""
        return local_values(self.w_rows if variable is None else variable, self.strategy)

    def set_all_rows(self, rows, variable=None):
        """Split `rows` (units*k, emb), the values of every class, into the shards of `variable` (`w_rows`): each
        replica assigns its own (every worker of a multi-worker strategy must call this together)."""
        variable = self.w_rows if variable is None else variable
        padded = np.zeros((self.num_shards, *variable.shape), "float32")
        for shard in range(self.num_shards):
            start, end = self.shard_bounds(shard)
            padded[shard, : end - start] = rows[start:end]
        padded = tf.constant(padded)

        def assign_own_shard():
            variable.assign(tf.gather(padded, tf.distribute.get_replica_context().replica_id_in_sync_group))

        self.strategy.run(assign_own_shard)

    def all_rows(self, variable=None):
        """The values of every class, (units*k, emb), gathered from the shards of `variable` (`w_rows`) of every
        replica (every worker of a multi-worker strategy must call this together)."""
        variable = self.w_rows if variable is None else variable
        shards = np.reshape(self.strategy.gather(variable.value, axis=0).numpy(), (self.num_shards, *variable.shape))
        bounds = [self.shard_bounds(shard) for shard in range(self.num_shards)]
        return np.concatenate([shard[: end - start] for shard, (start, end) in zip(shards, bounds, strict=True)])

    def kernel_for_call(self, training=None):
        """The (emb, units*k) kernel of every class (gathered from the shards; outside a train step only)."""
        return keras.ops.transpose(self.all_rows())

    def call(self, inputs, training=None):
        context = tf.distribute.get_replica_context()
        if context is None:  # cross-replica (Keras' build under a strategy): the local shards, read one by one
            return self.cosine_to_output(self.local_shards_cosine(inputs), inputs)
        return self.cosine_to_output(self.replica_cosine(inputs, context), inputs)

    def local_shards_cosine(self, inputs):
        """Cosines (batch, units*k) against the shards held by this process; under a multi-worker strategy the
        columns of other workers' shards are 0 (call the model through `strategy.run` / `predict` there)."""
        rows = tf.concat([tf.convert_to_tensor(local) for local in self.shards()], axis=0)
        cosine = self.row_cosine(inputs, rows[: self.units * self.loss_top_k])
        return tf.pad(cosine, [[0, 0], [0, self.units * self.loss_top_k - tf.shape(cosine)[1]]])

    def replica_cosine(self, inputs, context):
        """Cosines (batch, units*k) of this replica's `inputs` against every class: the inputs of all replicas
        are gathered, compared with this replica's shard, the columns of all shards gathered, and this replica's
        rows kept."""
        sizes = gather_integers(context, tf.shape(inputs)[:1])
        cosine = context.all_gather(self.row_cosine(context.all_gather(inputs, axis=0), self.w_rows.value), axis=1)
        start = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
        return cosine[start : start + tf.shape(inputs)[0], : self.units * self.loss_top_k]

    def get_weights(self):
        """[centres, optimizer slots...] of every class, each (units*k, emb), gathered from the shards."""
        return [self.all_rows(), *(self.all_rows(variable) for variable in self.slots.values())]

    def set_weights(self, weights):
        """Set what `get_weights` returns (each (units*k, emb)), split over the shards."""
        for variable, rows in zip([self.w_rows, *self.slots.values()], weights, strict=True):
            self.set_all_rows(rows, variable)

    def save_own_variables(self, store):
        """Write every class's centres and optimizer state, gathered from the shards (the rows layout)."""
        store["norm_dense_w_rows"] = self.all_rows()
        for name, variable in self.slots.items():
            store[name] = self.all_rows(variable)

    def load_own_variables(self, store):
        """Read what `save_own_variables` wrote, split over this run's shards."""
        self.set_all_rows(store["norm_dense_w_rows"])
        for name, variable in self.slots.items():
            self.set_all_rows(store[name], variable)

    def get_config(self):
        config = super().get_config()
        config.update({"optimizer_slots": list(self.optimizer_slots)})
        for key in ("append_norm", "partial_fc_split"):
            config.pop(key)
        return config



# ----------------------------------------------------------------------------------------------------------------
# The training step


def shard_sample(head, labels, replica, seed):
    """Sorted int32 indices, within replica `replica`'s shard, of the classes the step uses there: those of the
    global batch's integer `labels` (batch,) that fall in the shard, plus uniformly drawn others,
    `max(sample_size(shard classes, sample_rate), positives)` in all, never the padding beyond `units`."""
    first = tf.cast(replica, tf.int32) * head.shard_classes
    valid = tf.minimum(head.shard_classes, head.units - first)
    local = tf.cast(labels, tf.int32) - first
    local = tf.boolean_mask(local, tf.logical_and(local >= 0, local < head.shard_classes))
    positive = tf.math.bincount(local, minlength=head.shard_classes, maxlength=head.shard_classes) > 0
    wanted = tf.maximum(tf.cast(tf.cast(valid, tf.float32) * head.sample_rate, tf.int32), 1)
    return partial_fc.sample_classes(positive, wanted, seed, valid)


def shard_targets(labels, class_ids, first_class):
    """(batch, sample) one-hot targets of the global batch's integer `labels` among this shard's sampled
    `class_ids` (shard-local indices; the shard starts at class `first_class`); all-zero rows for samples whose
    class lives in another shard."""
    local = tf.cast(labels, class_ids.dtype) - tf.cast(first_class, class_ids.dtype)
    position = tf.searchsorted(class_ids, local)
    found = tf.gather(class_ids, tf.minimum(position, tf.size(class_ids) - 1)) == local
    return tf.one_hot(tf.where(found, position, -1), tf.size(class_ids), dtype=tf.float32)


def sharded_cross_entropy(logits, targets, context):
    """Per-sample softmax cross-entropy (batch,) over the logits of all shards, each replica holding its columns
    `logits` (batch, sample) and `targets`: `log Σ exp(logits) - target logit`, with the maximum, the sum of
    exponentials and the target logit combined across replicas."""
    local_max = tf.reduce_max(logits, axis=1)
    global_max = tf.stop_gradient(tf.reduce_max(context.all_gather(local_max[None], axis=0), axis=0))
    sum_exp = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                 tf.reduce_sum(tf.exp(logits - global_max[:, None]), axis=1))
    target = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(targets * logits, axis=1))
    return tf.math.log(sum_exp) + global_max - target


def gather_integers(context, values):
    """`context.all_gather(values, axis=0)` of int (n,) values below 2**24, as int32 (gathered as float32:
    MultiWorkerMirroredStrategy's collective gather fails on integer tensors)."""
    return tf.cast(context.all_gather(tf.cast(values, tf.float32), axis=0), tf.int32)


def integer_labels(labels):
    """Integer classes (batch,) of integer labels (batch,) or one-hot (batch, classes) rows."""
    return labels if labels.shape.rank == 1 else tf.argmax(labels, axis=-1, output_type=tf.int32)


def write_local_rows(variable, row_ids, rows):
    """Scatter `rows` into the rows `row_ids` of this replica's value of the variable synchronised on read
    `variable` (TensorFlow's `scatter_update` refuses such variables; the replica's own resource is updated)."""
    tf.raw_ops.ResourceScatterUpdate(resource=variable.value.handle, indices=row_ids, updates=rows)


def check_sharded_training(model, head):
    """ValueError / TypeError for what the sharded step does not support (see the module docstring)."""
    loss = keras.tree.flatten(model.loss)[-1] if model.loss is not None else None
    if len(model.outputs) != 1 or type(loss) not in SHARDED_LOSSES or getattr(loss, "label_smoothing", 0):
        raise ValueError(f"{model.name}: model-parallel Partial FC trains one output with one of "
                         f"{[cls.__name__ for cls in SHARDED_LOSSES]} without label smoothing; got {loss!r}")
    partial_fc.check_optimizer(model.optimizer)
    if optimizer_slot_names(model.optimizer) != head.optimizer_slots:
        raise ValueError(f"{head.name}: built with optimizer_slots={head.optimizer_slots}, the optimizer needs "
                         f"{optimizer_slot_names(model.optimizer)} (ShardedNormDense(optimizer_slots=...))")


@keras.saving.register_keras_serializable(package="keras_insightface")
class ShardedPartialFCModel(partial_fc.PartialFCModel):
    """A functional training model whose one output is a `ShardedNormDense` head: `fit` trains it model-parallel
    under a `tf.distribute` strategy (see the module docstring; without one, as one shard). Build it and its head
    inside `strategy.scope()`. Logged: the loss."""

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        head = [layer for layer in self.layers if isinstance(layer, ShardedNormDense)][-1]
        check_sharded_training(self, head)
        context, replicas, replica = replica_context()
        labels = gather_integers(context, integer_labels(y))
        seed = partial_fc.step_seed(head.sample_seed, self.optimizer.iterations)
        seed = seed if replicas == 1 else tf.random.experimental.stateless_fold_in(seed, replica)
        class_ids = shard_sample(head, labels, replica, seed)
        row_ids = partial_fc.sampled_row_ids(class_ids, head.loss_top_k)
        targets = shard_targets(labels, class_ids, tf.cast(replica, tf.int32) * head.shard_classes)
        with tf.GradientTape() as tape:
            rows = tf.gather(head.w_rows.value, row_ids)
            tape.watch(rows)  # the shards are not trainable variables: the Keras optimizer never sees them
            loss, shard_regularization = self.sharded_loss(x, head, rows, targets, context)
            loss = loss + tf.add_n([0.0, *self.losses])
            total = loss / replicas + shard_regularization
        grads = tape.gradient(total, [*self.trainable_variables, rows])
        updates = partial_fc.updated_rows(self.optimizer, head.w_rows, head.slots, row_ids, grads[-1])
        for variable, values in updates:
            write_local_rows(variable, row_ids, values)
        self.optimizer.apply(grads[:-1], self.trainable_variables)
        keras_compat.loss_tracker(self).update_state(
            loss + context.all_reduce(tf.distribute.ReduceOp.SUM, shard_regularization))
        return self.get_metrics_result()

    def sharded_loss(self, x, head, rows, targets, context):
        """`(mean loss of the global batch, regularisation of this shard's sampled rows)`."""
        [embedding] = keras_compat.call_with_layer_replaced(self, x, head, lambda inputs, **_: inputs, training=True)
        cosine = head.sampled_output(context.all_gather(embedding, axis=0), rows)
        margin_loss = keras.tree.flatten(self.loss)[-1]
        logits = margin_loss.margin_logits(targets, cosine)
        loss = tf.reduce_mean(sharded_cross_entropy(logits, targets, context))
        return loss, head.kernel_regularizer(rows) if head.kernel_regularizer is not None else 0.0
