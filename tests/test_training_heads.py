"""training_heads.py: a head described by `HeadSpec`, built into layers, read back from a model, and the named
embedding outputs."""

import keras
import numpy as np
from conftest import build_tiny_embedding_model

import training_heads
from heads import NormDense
from training_heads import HeadSpec


def test_head_spec_for_stage_keeps_only_what_the_kind_uses():
    assert HeadSpec.for_stage("softmax", 6, 3, True, 2, 16) == HeadSpec("softmax", 6)
    assert HeadSpec.for_stage("arcface", 6, 3, True, 2, 16) == HeadSpec("arcface", 6, 3, True, 2, 16)
    assert HeadSpec.for_stage("triplet", 6) is None and HeadSpec.for_stage("center", 6) is None
    assert len({HeadSpec("arcface", 6), HeadSpec("arcface", 6), HeadSpec("arcface", 6, 3)}) == 2  # hashable


def model_with_head(spec, regularizer=None):
    basic = build_tiny_embedding_model(size=16, embedding_size=8, pool=4)
    layers = training_heads.make_head_layers(spec, regularizer, {"start_iters": 0, "allowed_delta": 200})
    return keras.Model(basic.inputs[0], training_heads.apply_layers(layers, basic.outputs[0])), layers


def test_made_heads_read_back_as_their_spec():
    for spec in (HeadSpec("softmax", 5), HeadSpec("arcface", 5, 2, True), HeadSpec("arcface", 5, vpl_batch_size=4)):
        model, layers = model_with_head(spec, keras.regularizers.L2(1e-4))
        assert training_heads.head_spec_of(model) == spec
        assert training_heads.head_layers_of(model) == layers
    arcface, _ = model_with_head(HeadSpec("arcface", 5, 2, True))
    assert isinstance(arcface.layers[-1], NormDense) and arcface.output_shape == (None, 6)
    assert training_heads.head_spec_of(build_tiny_embedding_model(size=16, embedding_size=8, pool=4)) is None


def test_copy_matching_weights_copies_only_equal_shapes():
    _, old_layers = model_with_head(HeadSpec("arcface", 5))
    _, same_layers = model_with_head(HeadSpec("arcface", 5, append_norm=True))
    _, wider_layers = model_with_head(HeadSpec("arcface", 5, 2))
    training_heads.copy_matching_weights(old_layers, same_layers)
    training_heads.copy_matching_weights(old_layers, wider_layers)
    np.testing.assert_array_equal(same_layers[0].get_weights()[0], old_layers[0].get_weights()[0])
    assert wider_layers[0].get_weights()[0].shape == (8, 10)


def test_embedding_output_names_and_distill_map():
    basic = build_tiny_embedding_model(size=16, embedding_size=8, pool=4)
    center = training_heads.embedding_output(basic, "center")
    distill = training_heads.embedding_output(basic, "distill", teacher_emb_size=12)
    model = keras.Model(basic.inputs[0], [center, distill])
    assert model.output_names == ["center_embedding", "distill_embedding"]
    assert model.output_shape == [(None, 8), (None, 12)] and "distill_map" in [layer.name for layer in model.layers]
    same_width = training_heads.embedding_output(basic, "distill", teacher_emb_size=8)
    assert tuple(same_width.shape) == (None, 8)


def test_head_regularizer_follows_output_weight_decay():
    basic = build_tiny_embedding_model(size=16, embedding_size=8, pool=4)
    assert training_heads.head_regularizer(0, basic) is None
    assert training_heads.head_regularizer(0.5, basic).l2 == 0.25
    assert training_heads.head_regularizer(1, basic) is None  # no L2 in the basic model: 1 × 0
