"""Output heads for margin-based face recognition: cosine logits between embeddings and class centres.

`NormDense` is the layer every margin loss in `losses.py` expects after the embedding: it returns the cosine of
the angle between the L2-normalised embedding and each L2-normalised class centre, so its output lies in [-1, 1].
Options reproduce the original Keras_insightface head:

- `loss_top_k=K` (sub-center ArcFace): K centres per class, column `c*K + j` of the kernel is sub-centre `j` of class
  `c`, and the logit of a class is the best of its K cosines (`data_drop_top_k` relies on that column layout);
- `append_norm=True` (MagFace, AdaFace): one more column holding `-||x||`, the negated embedding norm (negated so it
  never wins the arg-max of an accuracy metric);
- `partial_fc_split=N`: N kernels of `units` classes each, used one after the other on successive training batches,
  in step with the partial-FC dataset that alternates batches between class groups;
- `sample_rate=r` (Partial FC v2): the class centres are stored one per row, `norm_dense_w_rows` (units*k, emb), so
  that `partial_fc.PartialFCModel` can train on the rows of a sampled subset of classes and update only those
  (`sampled_output`); called as a layer, the head still returns the cosines of every class.

`NormDenseVPL` adds Variational Prototype Learning: recent normalised embeddings of a class are mixed into its
centre; `VPLUpdateQueue` is the callback that files each batch's embeddings under their labels.

Heads compute in float32 whatever the global dtype policy (pass `dtype=` to override).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import keras
import tensorflow as tf
from keras import ops

import keras_compat
from preprocess import l2_normalize

NORMALIZE_EPSILON = 1e-5  # the floor of the squared norm when heads L2-normalise embeddings and centres


@keras.saving.register_keras_serializable(package="keras_insightface")
class NormDense(keras.layers.Layer):
    """Cosine-logit head: `normalize(x) @ normalize(W)`, shape (batch, units) (+1 column with `append_norm`).

    Args:
        units: number of classes (per shard when `partial_fc_split > 1`).
        kernel_regularizer: regulariser for the kernel (the original applies L2 of half the backbone weight decay).
        loss_top_k: sub-centres per class; the kernel has `units * loss_top_k` columns and each class logit is
            the maximum over its `loss_top_k` columns `c*k .. c*k + k - 1`.
        append_norm: append `-||x||` (the embedding norm, negated) as a last column, for MagFace / AdaFace.
        partial_fc_split: when > 1, hold `partial_fc_split` kernels of shape (emb, units*k) in
            `norm_dense_w_subs`; training call `i` uses kernel `i % partial_fc_split`.
        sample_rate: Partial FC v2 fraction of the classes a training step samples, in (0, 1] (None: off).
            Train such a head with `partial_fc.PartialFCModel`; 1.0 samples every class (the full head's step).
        sample_seed: int seed of the per-step class sample (the step's sample is drawn from `[seed, step]`).
        **kwargs: Layer arguments (`name`, `dtype`...). The dtype defaults to float32 even under a
            mixed-precision policy, as the original's training head does.

    Weights: `norm_dense_w` (emb, units*k); or `norm_dense_w_subs` (split, emb, units*k) and the int64 shard
    counter `cur_id`, which advances once per call with `training=True`; or, with `sample_rate`,
    `norm_dense_w_rows` (units*k, emb), the transposed kernel (its regulariser is applied by `PartialFCModel` to the
    sampled rows only).
    """

    def __init__(self, units=1000, kernel_regularizer=None, loss_top_k=1, append_norm=False, partial_fc_split=0,
                 sample_rate=None, sample_seed=0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(units) < 1 or int(loss_top_k) < 1 or int(partial_fc_split) < 0:
            raise ValueError(
                f"NormDense needs units >= 1, loss_top_k >= 1 and partial_fc_split >= 0; got units={units}, "
                f"loss_top_k={loss_top_k}, partial_fc_split={partial_fc_split}"
            )
        check_sample_rate(sample_rate, partial_fc_split)
        self.units, self.loss_top_k = int(units), int(loss_top_k)
        self.append_norm, self.partial_fc_split = bool(append_norm), int(partial_fc_split)
        self.sample_rate = None if sample_rate is None else float(sample_rate)
        self.sample_seed = int(sample_seed)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_initializer = keras.initializers.GlorotNormal()
        self.supports_masking = False

    @property
    def uses_partial_fc(self):
        """True when the head cycles through `partial_fc_split` kernel shards."""
        return self.partial_fc_split > 1

    @property
    def is_sampled(self):
        """True for a Partial FC v2 head (`sample_rate` set), whose centres are the rows of `w_rows`."""
        return self.sample_rate is not None

    def build(self, input_shape):
        kernel_shape = (input_shape[-1], self.units * self.loss_top_k)
        if self.is_sampled:
            self.w_rows = self.add_weight(
                name="norm_dense_w_rows", shape=kernel_shape[::-1], initializer=self.transposed_kernel_initializer
            )
        elif self.uses_partial_fc:
            self.cur_id = self.add_weight(
                name="cur_id", shape=(), initializer="zeros", dtype="int64", trainable=False,
                aggregation="only_first_replica",
            )
            self.sub_weights = self.add_weight(
                name="norm_dense_w_subs", shape=(self.partial_fc_split, *kernel_shape),
                initializer=self.kernel_initializer, regularizer=self.kernel_regularizer,
            )
        else:
            self.w = self.add_weight(
                name="norm_dense_w", shape=kernel_shape, initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
            )

    def transposed_kernel_initializer(self, shape, dtype=None):
        """The rows layout's initial value: the transpose of a column-layout kernel draw, so that the same random
        state gives the same class centres in either layout."""
        return ops.transpose(self.kernel_initializer(shape[::-1], dtype=dtype))

    def kernel_for_call(self, training=None):
        """The (emb, units*k) kernel to use now; with partial FC, the current shard, then advance the counter."""
        if self.is_sampled:
            return ops.transpose(self.w_rows)
        if not self.uses_partial_fc:
            return self.w
        kernel = ops.take(self.sub_weights, self.cur_id, axis=0)
        if training:
            self.cur_id.assign((self.cur_id + 1) % self.partial_fc_split)
        return kernel

    def cosine_to_output(self, cosine, inputs):
        """Reduce (batch, classes*k) cosines to per-class logits (batch, classes) and append `-||inputs||` when
        asked."""
        if self.loss_top_k > 1:
            cosine = ops.max(ops.reshape(cosine, (ops.shape(cosine)[0], -1, self.loss_top_k)), axis=-1)
        if self.append_norm:
            feature_norm = ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True))
            cosine = ops.concatenate([cosine, -feature_norm], axis=-1)
        return cosine

    def call(self, inputs, training=None):
        inputs = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(self.kernel_for_call(training), self.compute_dtype)
        cosine = ops.matmul(l2_normalize(inputs, axis=1, epsilon=NORMALIZE_EPSILON),
                            l2_normalize(kernel, axis=0, epsilon=NORMALIZE_EPSILON))
        return self.cosine_to_output(cosine, inputs)

    def row_cosine(self, inputs, rows):
        """Cosines (batch, rows) between `inputs` (batch, emb) and the centres `rows` (rows, emb), L2-normalised."""
        inputs = ops.cast(inputs, self.compute_dtype)
        return ops.matmul(l2_normalize(inputs, axis=1, epsilon=NORMALIZE_EPSILON),
                          ops.transpose(l2_normalize(rows, axis=1, epsilon=NORMALIZE_EPSILON)))

    def sampled_output(self, inputs, rows):
        """The head's output over a sample of classes: `rows` (sample*k, emb) are the centres of the sampled
        classes (`w_rows` gathered at `partial_fc.sampled_row_ids`); returns (batch, sample) cosines (+1 norm
        column with `append_norm`)."""
        return self.cosine_to_output(self.row_cosine(inputs, rows), ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units + int(self.append_norm))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "loss_top_k": self.loss_top_k,
                "append_norm": self.append_norm,
                "partial_fc_split": self.partial_fc_split,
                "sample_rate": self.sample_rate,
                "sample_seed": self.sample_seed,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


def check_sample_rate(sample_rate, partial_fc_split):
    """ValueError unless `sample_rate` is None or in (0, 1], and not combined with `partial_fc_split > 1`."""
    if sample_rate is None:
        return
    if not 0 < float(sample_rate) <= 1:
        raise ValueError(f"NormDense sample_rate must be in (0, 1]; got {sample_rate}")
    if int(partial_fc_split) > 1:
        raise ValueError("NormDense: sample_rate (Partial FC v2) and partial_fc_split cannot be combined")


@keras.saving.register_keras_serializable(package="keras_insightface")
class NormDenseVPL(NormDense):
    """`NormDense` with Variational Prototype Learning (Deng et al., CVPR 2021).

    Each training call, class `c`'s centre becomes `normalize((1-λ_c)·normalize(w_c) + λ_c·q_c)`, where `q_c` is the
    latest normalised embedding seen for class `c` (filed by the `VPLUpdateQueue` callback) and
    `λ_c = vpl_lambda` when `iters > start_iters` and `q_c` is at most `allowed_delta` iterations old, else 0.

    Args:
        batch_size: per-replica batch size; the last batch's normalised inputs are kept in `norm_features`
            of shape (batch_size, emb), so batches must all have this size (drop the remainder).
        units: as for `NormDense`.
        kernel_regularizer: as for `NormDense` (`loss_top_k`, `append_norm`, `partial_fc_split` and layer
            arguments go through `**kwargs`; with `loss_top_k > 1` the queued embedding is mixed into every
            sub-centre of its class).
        vpl_lambda: the mixing weight λ.
        start_iters: training iterations before the queue is used.
        allowed_delta: how many iterations a queued embedding stays usable.

    State (non-trainable): `norm_features`, `queue_features` (units, emb), `queue_iters` (units,) int64, `iters`
    int64, and `vpl_sample_ratio`, the fraction of classes that used their queue in the last call (what the
    original printed every step).
    """

    def __init__(self, batch_size, units=1000, kernel_regularizer=None, vpl_lambda=0.15, start_iters=8000,
                 allowed_delta=200, **kwargs):
        super().__init__(units, kernel_regularizer, **kwargs)
        if self.is_sampled:
            raise ValueError("NormDenseVPL: Variational Prototype Learning needs every class centre each step; "
                             "it cannot be combined with sample_rate (Partial FC v2)")
        self.batch_size, self.vpl_lambda = int(batch_size), float(vpl_lambda)
        self.start_iters, self.allowed_delta = int(start_iters), int(allowed_delta)

    def build(self, input_shape):
        super().build(input_shape)
        emb_shape = input_shape[-1]

        def state(name, shape, dtype="float32", initializer="zeros"):
            return self.add_weight(name=name, shape=shape, dtype=dtype, initializer=initializer, trainable=False,
                                   aggregation="only_first_replica")

        self.norm_features = state("norm_features", (self.batch_size, emb_shape))
        self.queue_features = state("queue_features", (self.units, emb_shape), initializer=self.kernel_initializer)
        self.queue_iters = state("queue_iters", (self.units,), dtype="int64")
        self.iters = state("iters", (), dtype="int64")
        self.vpl_sample_ratio = state("vpl_sample_ratio", ())

    def queue_lambda(self):
        """Per-class mixing weight λ_c, shape (units,), from the current iteration count and queue ages."""
        fresh = ops.logical_and(self.iters > self.start_iters, self.iters - self.queue_iters <= self.allowed_delta)
        return ops.where(fresh, self.vpl_lambda, 0.0)

    def call(self, inputs, training=None):
        inputs = ops.cast(inputs, self.compute_dtype)
        if training:
            self.iters.assign_add(1)
        queue_lambda = self.queue_lambda()
        norm_inputs = l2_normalize(inputs, axis=1, epsilon=NORMALIZE_EPSILON)
        if training:
            self.vpl_sample_ratio.assign(ops.mean(ops.cast(queue_lambda > 0, "float32")))
            self.norm_features.assign(norm_inputs)

        kernel = ops.cast(self.kernel_for_call(training), self.compute_dtype)
        norm_kernel = l2_normalize(kernel, axis=0, epsilon=NORMALIZE_EPSILON)
        column_lambda = ops.repeat(queue_lambda, self.loss_top_k, axis=0)  # column c*k + j belongs to class c
        column_queue = ops.repeat(ops.transpose(self.queue_features), self.loss_top_k, axis=1)
        injected_kernel = norm_kernel * (1 - column_lambda) + column_queue * column_lambda
        injected_kernel = l2_normalize(injected_kernel, axis=0, epsilon=NORMALIZE_EPSILON)
        return self.cosine_to_output(ops.matmul(norm_inputs, injected_kernel), inputs)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "batch_size": self.batch_size,
                "vpl_lambda": self.vpl_lambda,
                "start_iters": self.start_iters,
                "allowed_delta": self.allowed_delta,
            }
        )
        return config


class VPLUpdateQueue(keras.callbacks.Callback):
    """After each training batch, file `NormDenseVPL.norm_features` into `queue_features` at the batch's labels.

    The labels come from the margin loss, which keeps them in `batch_labels_back_up` once its `build(batch_size)`
    has been called. The loss is found among all of `model.loss` (the original assumed it was the first one).

    Args:
        vpl_layer: the `NormDenseVPL` layer; found in the model when None.
        loss: the loss holding `batch_labels_back_up`; found in `model.loss` when None.
    """

    def __init__(self, vpl_layer=None, loss=None):
        super().__init__()
        self.vpl_layer, self.loss = vpl_layer, loss

    def on_train_begin(self, logs=None):
        if self.vpl_layer is None:
            found = [layer for layer in keras_compat.all_sublayers(self.model) if isinstance(layer, NormDenseVPL)]
            if not found:
                raise ValueError("VPLUpdateQueue: the model has no NormDenseVPL layer")
            self.vpl_layer = found[0]
        if self.loss is None:
            losses = keras.tree.flatten(self.model.loss)  # one loss, a list or a dict
            found = [ii for ii in losses if getattr(ii, "batch_labels_back_up", None) is not None]
            if not found:
                raise ValueError(
                    "VPLUpdateQueue: no loss in model.loss keeps its labels; call loss.build(batch_size) before compile"
                )
            self.loss = found[0]

    def on_train_batch_end(self, batch, logs=None):
        layer = self.vpl_layer
        labels = tf.expand_dims(self.loss.batch_labels_back_up.value, 1)
        layer.queue_features.value.scatter_nd_update(labels, layer.norm_features.value)
        stamps = tf.fill(tf.shape(labels)[:1], layer.iters.value)
        layer.queue_iters.value.scatter_nd_update(labels, stamps)
