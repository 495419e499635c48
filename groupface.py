"""GroupFace (Kim et al., CVPR 2020): group-aware embeddings on top of any backbone.

From a shared feature ``x`` (N, D), GroupFace computes

- an instance embedding ``v = W x`` (N, E),
- K group-aware embeddings ``v_k = W_k x`` (N, K, E),
- group probabilities ``p(k | x)`` (N, K) from the *group decision network* (an MLP ending in a K-way softmax),

and outputs ``v + Σ_k p(k | x) · v_k`` (N, E). The group decision network has no labels of its own; it learns
from the *self-distributed grouping loss*: the batch-centred probabilities ``p(k | x) − mean_batch(p(k | ·)) + 1/K``
pick each sample's pseudo group (their argmax), and the loss is the cross-entropy of ``p(· | x)`` against that
pseudo group. Centring removes the groups' popularity, so the pseudo groups, and with them the learnt
assignments, spread evenly over the K groups instead of collapsing into one.

Typical use, ArcFace on top through ``train.Train`` (the grouping loss enters with ``add_loss``, so no scheduler
key is needed)::

    import GhostFaceNets, groupface, losses, train
    basic = GhostFaceNets.buildin_models("ghostnetv1", output_layer="GNAP", emb_shape=512)
    model = groupface.build_groupface_model(basic, groups=4, emb_shape=512, grouping_loss_weight=0.1)
    tt = train.Train("faces.tfrecord", "groupface.h5", basic_model=model, batch_size=128)
    tt.train([{"loss": losses.ArcfaceLoss(scale=64), "epoch": 10}])
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import keras
from keras import layers, ops

import GhostFaceNets
import keras_compat


def balanced_group_labels(probabilities):
    """Pseudo group of each sample (N,) int: argmax over k of ``p(k|x) − mean over the batch of p(k|·) + 1/K``.

    ``probabilities``: (N, K) group probabilities. The result carries no gradient.
    """
    probabilities = ops.stop_gradient(ops.cast(probabilities, "float32"))
    groups = ops.shape(probabilities)[-1]
    centred = probabilities - ops.mean(probabilities, axis=0, keepdims=True) + 1.0 / groups
    return ops.argmax(centred, axis=-1)


def self_distributed_grouping_loss(probabilities):
    """The self-distributed grouping loss (scalar, float32): mean cross-entropy of the (N, K) group
    probabilities against the pseudo groups of `balanced_group_labels`."""
    probabilities = ops.cast(probabilities, "float32")
    labels = balanced_group_labels(probabilities)
    return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, probabilities))


def group_imbalance(probabilities):
    """How far the batch's mean group probability is from uniform: ``K · max_k mean_batch p(k|·) − 1``.

    0 for perfectly balanced groups, ``K − 1`` when every sample sits surely in one group. Float scalar.
    """
    probabilities = ops.cast(probabilities, "float32")
    groups = ops.shape(probabilities)[-1]
    return groups * ops.max(ops.mean(probabilities, axis=0)) - 1.0


@keras.saving.register_keras_serializable(package="keras_insightface")
class GroupDecisionNetwork(layers.Layer):
    """The group decision network: ``blocks`` × (Dense ``hidden`` → BatchNorm → ReLU), then Dense ``groups`` →
    softmax. (N, D) features → (N, ``groups``) float32 probabilities (float32 also under mixed precision).
    ``kernel_regularizer`` applies to the Dense kernels."""

    def __init__(self, groups=4, hidden=256, blocks=2, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.hidden, self.blocks = groups, hidden, blocks
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        dense_options = {"kernel_regularizer": self.kernel_regularizer, "dtype": self.dtype_policy}
        self.hidden_layers = [
            (layers.Dense(hidden, name=f"dense_{index}", **dense_options),
             layers.BatchNormalization(name=f"batchnorm_{index}", dtype=self.dtype_policy))
            for index in range(blocks)
        ]
        self.logits = layers.Dense(groups, name="logits", **dense_options)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for dense, batchnorm in self.hidden_layers:
            dense.build(shape)
            shape = (*shape[:-1], self.hidden)
            batchnorm.build(shape)
        self.logits.build(shape)

    def call(self, inputs, training=None):
        nn = inputs
        for dense, batchnorm in self.hidden_layers:
            nn = ops.relu(batchnorm(dense(nn), training=training))
        return ops.softmax(ops.cast(self.logits(nn), "float32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.groups)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "hidden": self.hidden, "blocks": self.blocks,
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)}


@keras.saving.register_keras_serializable(package="keras_insightface")
class GroupFace(keras_compat.EagerReadableLosses, layers.Layer):
    """GroupFace representation: (N, D) shared features → (N, ``emb_shape``) ``v + Σ_k p(k|x) · v_k``.

    ``groups`` K; ``gdn_hidden`` / ``gdn_blocks``: the group decision network's width and depth;
    ``grouping_loss_weight``: weight λ of the self-distributed grouping loss, added with ``add_loss`` on every
    training call (0 adds none); ``use_bias``: biases of the instance / group projections;
    ``kernel_regularizer``: regulariser of every Dense kernel inside (``GhostFaceNets.add_l2_regularizer_2_model``
    does not reach inside this layer).
    ``group_probabilities(x)`` gives the (N, K) float32 probabilities. The grouping loss of the latest call is in
    ``model.losses``; read eagerly after a ``fit`` step (as ``myCallbacks.My_history`` does at each epoch end), the
    graph tensor that step left behind is left out instead of raising (``keras_compat.EagerReadableLosses``).
    """

    def __init__(self, groups=4, emb_shape=512, gdn_hidden=256, gdn_blocks=2, grouping_loss_weight=0.1,
                 use_bias=False, kernel_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.emb_shape = groups, emb_shape
        self.gdn_hidden, self.gdn_blocks = gdn_hidden, gdn_blocks
        self.grouping_loss_weight, self.use_bias = grouping_loss_weight, use_bias
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        projection = {"use_bias": use_bias, "kernel_initializer": "glorot_normal",
                      "kernel_regularizer": self.kernel_regularizer, "dtype": self.dtype_policy}
        self.instance = layers.Dense(emb_shape, name="instance", **projection)
        self.group_embeddings = layers.Dense(groups * emb_shape, name="group_embeddings", **projection)
        self.group_decision = GroupDecisionNetwork(groups, gdn_hidden, gdn_blocks, self.kernel_regularizer,
                                                   name="group_decision", dtype=self.dtype_policy)

    def build(self, input_shape):
        for layer in (self.instance, self.group_embeddings, self.group_decision):
            layer.build(tuple(input_shape))

    def group_probabilities(self, inputs, training=None):
        """(N, K) float32 group probabilities ``p(k|x)`` of the (N, D) features."""
        return self.group_decision(inputs, training=training)

    def call(self, inputs, training=None):
        probabilities = self.group_probabilities(inputs, training=training)
        if training and self.grouping_loss_weight:
            self.add_loss(self.grouping_loss_weight * self_distributed_grouping_loss(probabilities))
        group_embeddings = ops.reshape(self.group_embeddings(inputs), (-1, self.groups, self.emb_shape))
        weights = ops.cast(probabilities, group_embeddings.dtype)[:, :, None]
        return self.instance(inputs) + ops.sum(weights * group_embeddings, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.emb_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "groups": self.groups,
            "emb_shape": self.emb_shape,
            "gdn_hidden": self.gdn_hidden,
            "gdn_blocks": self.gdn_blocks,
            "grouping_loss_weight": self.grouping_loss_weight,
            "use_bias": self.use_bias,
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
        }


def shared_features(model, pooling):
    """The tensor GroupFace starts from, (N, D), inside ``model``'s graph.

    - A model with a layer named ``embedding`` (a ``buildin_models`` basic model): that layer's input. The
      ``embedding`` layer must hold no weights (ours is a float32 identity), since GroupFace replaces it.
    - Otherwise the model's first output: a 4-D feature map is pooled with ``pooling`` (``"GNAP"`` or ``"GAP"``),
      a 2-D feature is used as it is.
    """
    names = [layer.name for layer in model.layers]
    if "embedding" in names:
        layer = model.layers[len(names) - 1 - names[::-1].index("embedding")]
        if layer.weights:
            raise ValueError(
                f"model '{model.name}': its 'embedding' layer ({layer.__class__.__name__}) holds weights, and "
                "GroupFace would replace it; pass keras.Model(model.input, <the tensor before it>) instead"
            )
        return layer.input
    features = model.outputs[0]
    if len(features.shape) == 2:
        return features
    if len(features.shape) != 4:
        raise ValueError(f"model '{model.name}': output of shape {features.shape} is neither (N, D) nor (N, H, W, C)")
    poolings = {"GNAP": GhostFaceNets.GlobalNormAwarePooling, "GAP": layers.GlobalAveragePooling2D}
    if pooling not in poolings:
        raise ValueError(f"pooling {pooling!r}: choose one of {list(poolings)}")
    return poolings[pooling](name=f"groupface_{pooling.lower()}")(features)


def build_groupface_model(basic_model_or_feature_model, groups=4, emb_shape=512, grouping_loss_weight=0.1,
                          gdn_hidden=256, gdn_blocks=2, pooling="GNAP", use_bias=False, kernel_regularizer=None,
                          name=None):
    """A GroupFace embedding model: ``basic_model_or_feature_model`` → `GroupFace` → BatchNorm →
    float32 ``embedding`` (N, ``emb_shape``), ready for ``train.Train(basic_model=...)``.

    The input is a basic model with a weightless ``embedding`` layer (GroupFace starts from that layer's input),
    or a feature model whose first output is a feature map (pooled by ``pooling``: ``"GNAP"`` or ``"GAP"``) or a
    2-D feature; see `shared_features`. The model shares the input model's layers (and weights).
    ``groups``, ``grouping_loss_weight``, ``gdn_hidden``, ``gdn_blocks``, ``use_bias``, ``kernel_regularizer``: see
    `GroupFace` (e.g. ``keras.regularizers.L2(5e-4 / 2)`` to match ``add_l2_regularizer_2_model(.., 5e-4)``).
    """
    source = basic_model_or_feature_model
    groupface = GroupFace(groups, emb_shape, gdn_hidden, gdn_blocks, grouping_loss_weight, use_bias,
                          kernel_regularizer, name="groupface")
    nn = groupface(shared_features(source, pooling))
    nn = layers.BatchNormalization(name="groupface_batchnorm")(nn)
    embedding = layers.Activation("linear", dtype="float32", name="embedding")(nn)
    return keras.Model(source.inputs[0], embedding, name=name or f"{source.name}_groupface")


def group_probability_model(model):
    """A model mapping ``model``'s input to the (N, K) group probabilities of its (first) GroupFace layer."""
    layer = next((layer for layer in model.layers if isinstance(layer, GroupFace)), None)
    if layer is None:
        raise ValueError(f"model '{model.name}' has no GroupFace layer")
    return keras.Model(model.inputs[0], layer.group_probabilities(layer.input), name=f"{model.name}_groups")
