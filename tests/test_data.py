"""Folder datasets on tf.data: round trip, scan cache, bad input, augmentation levels, mixup, triplet, partial FC,
TFRecord and distillation sources. Every image encodes its class in its pixel values, so labels can be checked."""

import os
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import data

CLASS_NAMES = ["0", "1", "2", "10"]  # natural order: 0, 1, 2, 10 (a string sort would put "10" second)
IMAGES_PER_CLASS = 6
MASK_VALUE = (128 - 127.5) * 0.0078125


def class_value(index):
    return 30 + 50 * index


def make_image(index):
    """112x112 RGB: left half at the class value, right half 10 brighter (so a mirror is detectable)."""
    image = np.full((112, 112, 3), class_value(index), np.uint8)
    image[:, 56:] += 10
    return image


def normalised(value):
    return (value - 127.5) * 0.0078125


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces") / "folders"
    for index, name in enumerate(CLASS_NAMES):
        os.makedirs(root / name)
        for k in range(IMAGES_PER_CLASS):
            extension = ".bmp" if k == 0 else ".png"
            cv2.imwrite(str(root / name / f"{k}{extension}"), cv2.cvtColor(make_image(index), cv2.COLOR_RGB2BGR))
    return root


def class_of(image):
    """Class index from a normalised image (left-half value)."""
    value = image[0, 0, 0] / 0.0078125 + 127.5
    return int(np.argmin([abs(value - class_value(i)) for i in range(len(CLASS_NAMES))]))


def take(ds, batches):
    return [(x.numpy(), y) for x, y in ds.take(batches)]


def test_folder_round_trip(dataset_dir, tmp_path):
    ds, steps = data.prepare_dataset(dataset_dir, batch_size=8, is_train=False, cache_dir=tmp_path)
    assert steps == 3
    seen = 0
    for images, labels in take(ds, 3):
        assert images.shape == (8, 112, 112, 3) and images.dtype == np.float32
        assert labels.shape == (8, 4)
        for image, label in zip(images, labels.numpy(), strict=True):
            index = class_of(image)
            assert np.array_equal(label, np.eye(4)[index])
            assert np.allclose(image[:, :56], normalised(class_value(index)))
            assert np.allclose(image[:, 56:], normalised(class_value(index) + 10))
            seen += 1
    assert seen == 24
    _, sparse = next(
        iter(data.prepare_dataset(dataset_dir, batch_size=8, is_train=False, cache_dir=tmp_path, sparse_label=True)[0])
    )
    assert sparse.dtype == tf.int32 and sparse.shape == (8,)
    ds, steps = data.prepare_dataset(dataset_dir, batch_size=5, is_train=False, cache_dir=tmp_path)
    assert steps == 5 and [len(labels) for _, labels in ds] == [5, 5, 5, 5, 4]  # every image, the last batch short


def write_jpeg(path, image, **options):
    """Save an RGB uint8 image as JPEG with Pillow (`options`: progressive, exif, ...)."""
    Image.fromarray(image).save(path, "JPEG", quality=95, **options)


def test_jpeg_sizes_walks_the_marker_segments(tmp_path):
    exif = Image.Exif()
    exif[0x010E] = "a long description " * 40  # a big APP1 segment before the frame header
    variants = [
        ((112, 112), {}),
        ((90, 60), {"progressive": True}),
        ((33, 44), {"exif": exif.tobytes()}),
        ((7, 300), {"subsampling": 0}),
    ]
    encoded, expected = [], []
    for k, (size, options) in enumerate(variants):
        write_jpeg(tmp_path / f"{k}.jpg", np.zeros((*size, 3), np.uint8), **options)
        encoded.append((tmp_path / f"{k}.jpg").read_bytes())
        expected.append(list(size))
    with_fill = encoded[0][:2] + b"\xff\xff" + encoded[0][2:]  # fill bytes before a marker are allowed
    grey = cv2.imencode(".jpg", np.zeros((20, 30), np.uint8))[1].tobytes()
    png = cv2.imencode(".png", np.zeros((5, 5, 3), np.uint8))[1].tobytes()
    encoded += [with_fill, grey, png, b"", b"\xff\xd8\xff", encoded[0][:20]]
    expected += [[112, 112], [20, 30], [0, 0], [0, 0], [0, 0], [0, 0]]
    assert data.jpeg_sizes(tf.constant(encoded)).numpy().tolist() == expected


def test_jpeg_folder_decodes_exactly_and_resizes_other_sizes(tmp_path):
    root = tmp_path / "jpegs"
    for index in range(3):
        os.makedirs(root / str(index))
        for k in range(3):
            write_jpeg(root / str(index) / f"{k}.jpg", make_image(index))
    paths = sorted(str(path) for path in root.rglob("*.jpg"))
    expected = [data.normalize(tf.io.decode_jpeg(tf.io.read_file(path))).numpy() for path in paths]
    ds, _ = data.prepare_dataset(root, batch_size=9, is_train=False, cache_dir=tmp_path)
    images, labels = next(iter(ds))
    assert np.array_equal(images.numpy(), np.stack(expected))  # all 112x112 JPEGs: the exact decode
    assert np.argmax(labels, axis=1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    write_jpeg(root / "1" / "1.jpg", cv2.resize(make_image(1), (150, 120)))  # one image of another size
    ds, _ = data.prepare_dataset(root, batch_size=9, is_train=False, cache_dir=tmp_path)
    images = next(iter(ds))[0].numpy()
    assert images.shape == (9, 112, 112, 3)
    assert np.array_equal(np.delete(images, 4, axis=0), np.delete(np.stack(expected), 4, axis=0))
    assert np.allclose(images[4][:, :40], normalised(class_value(1)), atol=2 * 0.0078125)
    assert np.allclose(images[4][:, 72:], normalised(class_value(1) + 10), atol=2 * 0.0078125)


def test_normalize_uint8_is_bitwise_the_normalisation_formula():
    values = np.arange(256, dtype=np.uint8)
    expected = (values.astype(np.float32) - np.float32(127.5)) * np.float32(0.0078125)
    result = data.normalize_uint8(tf.constant(values.reshape(16, 16))).numpy().ravel()
    assert result.dtype == np.float32 and np.array_equal(result, expected)
    assert np.array_equal(data.normalize(tf.constant(values)).numpy(), expected)


def test_scan_order_cache_and_invalidation(dataset_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    names, classes, _, count, cache_path = data.pre_process_folder(copy, cache_dir=tmp_path / "cache")
    assert count == 4 and os.path.dirname(cache_path) == str(tmp_path / "cache")
    assert [os.path.basename(os.path.dirname(n)) for n in names[classes == 3]] == ["10"] * 6
    assert data.sort_class_names(CLASS_NAMES, "sorted") == ["0", "1", "10", "2"]
    mtime = os.path.getmtime(cache_path)
    assert len(data.pre_process_folder(copy, cache_dir=tmp_path / "cache")[0]) == 24
    assert os.path.getmtime(cache_path) == mtime  # served from the cache
    cv2.imwrite(str(copy / "2" / "new.png"), make_image(2))
    os.makedirs(copy / "3")
    cv2.imwrite(str(copy / "3" / "a.jpeg"), make_image(0))
    names, classes, _, count, _ = data.pre_process_folder(copy, cache_dir=tmp_path / "cache")
    assert len(names) == 26 and count == 5 and int(classes[names.tolist().index(str(copy / "10" / "0.bmp"))]) == 4


def test_bad_folders_get_clear_messages(dataset_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    (copy / "1" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"1 non-image file.*notes\.txt"):
        data.scan_folder(copy)
    os.makedirs(copy / "empty_person")
    with pytest.raises(ValueError, match=r"empty_person holds no image files"):
        data.scan_folder(copy)


def test_unreadable_images_are_skipped_counted_and_named(dataset_dir, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    _, encoded = cv2.imencode(".jpg", make_image(1))
    (copy / "1" / "truncated.jpg").write_bytes(encoded.tobytes()[:300])
    (copy / "2" / "fake.png").write_bytes(b"this is text, not a PNG")
    before = data.skipped_image_count()
    ds, _ = data.prepare_dataset(copy, batch_size=12, is_train=False, cache_dir=tmp_path)
    assert sum(images.shape[0] for images, _ in ds) == 24  # one pass over 26 files: 24 readable
    assert data.skipped_image_count() - before == 2
    skipped = data.SkippedImages()  # a counter of its own: the default one is left alone
    ds, steps = data.prepare_dataset(copy, batch_size=26, random_status=-1, cache_dir=tmp_path, skipped_images=skipped)
    # Training goes on, epoch after epoch: the batch holding the two broken files is two images shorter.
    assert steps == 1 and [len(labels) for _, labels in ds.take(3)] == [24, 24, 24]
    assert skipped.count >= 6 and skipped.count % 2 == 0 and data.skipped_image_count() - before == 2
    assert {os.path.basename(name) for name in skipped.files} == {"truncated.jpg", "fake.png"}
    warnings = [record for record in caplog.records if record.levelname == "WARNING"]
    assert any("truncated.jpg" in record.getMessage() and "fake.png" in record.getMessage() for record in warnings)


def test_random_status_levels(dataset_dir, tmp_path):
    for level in (-1, 0, 1, 2, 3, 100, 300):
        ds, _ = data.prepare_dataset(dataset_dir, batch_size=8, random_status=level, cache_dir=tmp_path)
        images, labels = next(iter(ds))
        images = images.numpy()
        assert images.shape == (8, 112, 112, 3), level
        assert images.min() >= -1 and images.max() <= 1, level
        for image, label in zip(images, labels.numpy(), strict=True):
            index = int(np.argmax(label))
            left, right = normalised(class_value(index)), normalised(class_value(index) + 10)
            if level == -1:
                assert np.allclose(image[:, :56], left) and np.allclose(image[:, 56:], right)
            elif level == 0:  # flip only: the image or its mirror
                assert np.allclose(image[:, :56], left) or np.allclose(image[:, :56], right)
            elif level == 1:  # flip, then brightness moves the whole image by one delta within ±12.75
                delta = image[0, 0, 0] - (left if np.isclose(image[0, 0, 0] - image[0, -1, 0], left - right) else right)
                assert abs(delta) <= 12.75 * 0.0078125 + 1e-6 and np.isclose(np.ptp(image[0, :, 0]), 10 * 0.0078125)


@pytest.mark.parametrize("in_file", [False, True])
def test_cached_dataset_decodes_once_and_still_flips_and_normalises(dataset_dir, tmp_path, in_file):
    cache = str(tmp_path / "decoded") if in_file else True
    ds, steps = data.prepare_dataset(dataset_dir, batch_size=8, random_status=0, cache=cache, cache_dir=tmp_path)
    assert steps == 3
    mirrored = []
    for images, labels in take(ds, 6):  # two passes over the 24 images
        assert images.shape == (8, 112, 112, 3) and images.dtype == np.float32
        for image, label in zip(images, labels.numpy(), strict=True):
            value = class_value(int(np.argmax(label)))
            mirrored.append(np.allclose(image[:, :56], normalised(value + 10)))
            assert mirrored[-1] or np.allclose(image[:, :56], normalised(value))
    assert 0 < sum(mirrored) < len(mirrored)  # each image is flipped at random on every pass
    if in_file:
        assert any(name.startswith("decoded") for name in os.listdir(tmp_path))


def test_adjust_saturation_matches_the_hsv_round_trip():
    rng = np.random.default_rng(0)
    images = rng.uniform(-20, 280, (6, 9, 9, 3)).astype(np.float32)  # brightness may leave 0..255 before the clip
    images[0, 0, 0] = 50  # a grey pixel
    images[0, 0, 1] = [0, 0, 7]  # a pure blue one
    images[2, 0, 0] = [-5, -10, -3]  # value <= 0: grey at the value
    images[1] = rng.uniform(0, 255, (9, 9, 3))
    factors = np.array([0.0, 0.5, 0.8, 1.0, 1.3, 3.0], np.float32).reshape(6, 1, 1, 1)
    hue, saturation, value = tf.unstack(tf.image.rgb_to_hsv(images), axis=-1)
    saturation = tf.clip_by_value(saturation * factors[..., 0], 0.0, 1.0)
    expected = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1)).numpy()
    np.testing.assert_allclose(data.adjust_saturation(images, factors).numpy(), expected, atol=1e-3)
    assert np.allclose(data.adjust_saturation(images[1:2], 0.0), images[1].max(axis=-1, keepdims=True))


def test_cutout_mask_at_every_random_status(dataset_dir, tmp_path):
    for level in (-1, 0, 2, 3, 100):
        ds, _ = data.prepare_dataset(
            dataset_dir, batch_size=8, random_status=level, random_cutout_mask_area=1.0, cache_dir=tmp_path
        )
        images = next(iter(ds))[0].numpy()
        assert np.allclose(images[:, int(0.7 * 112) :], MASK_VALUE), level
        top_rows_masked = np.all(np.isclose(images[:, : int(0.55 * 112)], MASK_VALUE), axis=(1, 2, 3))
        assert not top_rows_masked.any(), level


def test_mixup_mixes_images_and_labels_alike(dataset_dir, tmp_path):
    tf.random.set_seed(3)
    ds, _ = data.prepare_dataset(dataset_dir, batch_size=24, random_status=-1, mixup_alpha=1.0, cache_dir=tmp_path)
    images, labels = next(iter(ds))
    images, labels = images.numpy(), labels.numpy()
    assert np.allclose(labels.sum(1), 1)
    assert (labels.max(1) < 1).any() and (labels.max(1) >= 0.5 - 1e-6).all()
    expected_left = labels @ np.array([normalised(class_value(i)) for i in range(4)])
    assert np.allclose(images[:, 0, 0, 0], expected_left, atol=1e-5)
    with pytest.raises(ValueError, match="one-hot"):
        data.prepare_dataset(dataset_dir, batch_size=8, mixup_alpha=0.4, sparse_label=True, cache_dir=tmp_path)


def test_triplet_batches_hold_k_images_of_each_class(dataset_dir, tmp_path):
    ds, steps = data.Triplet_dataset(dataset_dir, batch_size=10, image_per_class=4, random_status=0, cache_dir=tmp_path)
    assert steps == 2  # 4 classes x one group of 4, 2 groups per batch of 8 (10 // 4 * 4)
    for images, labels in take(ds, 6):
        assert images.shape == (8, 112, 112, 3)
        counts = np.bincount(np.argmax(labels.numpy(), 1), minlength=4)
        assert sorted(counts[counts > 0]) == [4, 4]
        assert [class_of(image) for image in images] == list(np.argmax(labels.numpy(), 1))


def test_partial_fc_batches_alternate_class_shards(dataset_dir, tmp_path):
    ds, steps = data.prepare_dataset(
        dataset_dir, batch_size=4, random_status=-1, partial_fc_split=2, cache_dir=tmp_path
    )
    assert steps == 6  # both shards hold 12 images: 3 batches each, interleaved
    shards = []
    for images, labels in take(ds, 8):
        true_classes = [class_of(image) for image in images]
        assert labels.shape == (4, 2)
        assert np.array_equal(np.argmax(labels.numpy(), 1), np.array(true_classes) % 2)
        assert len({c // 2 for c in true_classes}) == 1
        shards.append(true_classes[0] // 2)
    assert shards == [0, 1] * 4


def test_image_per_class_keeps_large_classes(dataset_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset_dir, copy)
    for k in range(3):
        os.remove(copy / "2" / f"{k + 1}.png")
    mask, kept = data.pick_by_image_per_class(data.pre_process_folder(copy, cache_dir=tmp_path)[1], 4)
    assert kept.tolist() == [0, 1, 3] and mask.sum() == 18
    ds, steps = data.prepare_dataset(copy, batch_size=6, is_train=False, image_per_class=4, cache_dir=tmp_path)
    assert steps == 3
    assert all(2 not in np.argmax(labels.numpy(), 1) for _, labels in ds)


def test_tfrecord_write_and_read(dataset_dir, tmp_path):
    path, total, classes = data.write_tfrecord_from_folder(dataset_dir, tmp_path / "faces.tfrecord", cache_dir=tmp_path)
    assert (total, classes) == (24, 4)
    ds, steps = data.prepare_dataset(str(path), batch_size=8, is_train=False)
    assert steps == 3
    for images, labels in take(ds, 3):
        assert [class_of(image) for image in images] == list(np.argmax(labels.numpy(), 1))
    with pytest.raises(ValueError, match="does not support image_per_class, partial_fc_split"):
        data.prepare_dataset(str(path), batch_size=8, partial_fc_split=2, image_per_class=3)


def test_distillation_from_npz_tfrecord_and_teacher(dataset_dir, tmp_path):
    names, classes, _, _, _ = data.pre_process_folder(dataset_dir, cache_dir=tmp_path)
    embeddings = np.stack([np.full(5, c, np.float32) + np.arange(5) for c in classes])
    np.savez(tmp_path / "distill.npz", image_names=names, image_classes=classes, embeddings=embeddings)
    ds, _ = data.prepare_dataset(str(tmp_path / "distill.npz"), batch_size=8, is_train=False)
    images, (embs, labels) = next(iter(ds))
    assert np.allclose(embs.numpy()[:, 0], np.argmax(labels.numpy(), 1))
    data.write_distill_tfrecord(tmp_path / "distill.tfrecord", names, classes, embeddings, use_fp16=True)
    ds, steps = data.prepare_dataset(str(tmp_path / "distill.tfrecord"), batch_size=8, random_status=-1)
    images, (embs, labels) = next(iter(ds))
    assert steps == 3 and embs.shape == (8, 5)
    assert [class_of(image) for image in images.numpy()] == list(embs.numpy()[:, 0].astype(int))

    def teacher(batch):  # sees normalised images; returns a 3-d "embedding"
        return tf.reduce_mean(batch, axis=[1, 2])

    ds, _ = data.prepare_dataset(
        dataset_dir, batch_size=8, is_train=False, teacher_model_interf=teacher, cache_dir=tmp_path
    )
    images, (teacher_out, labels) = next(iter(ds))
    assert np.allclose(teacher_out.numpy(), images.numpy().mean(axis=(1, 2)), atol=1e-5)
    soft = lambda batch: tf.nn.softmax(tf.reduce_mean(batch, axis=[1, 2, 3])[:, None] * tf.ones([1, 4]))  # noqa: E731
    images, soft_labels = next(
        iter(
            data.prepare_dataset(
                dataset_dir, batch_size=8, is_train=False, teacher_model_interf=soft, cache_dir=tmp_path
            )[0]
        )
    )
    assert soft_labels.shape == (8, 4) and np.allclose(soft_labels.numpy(), 0.25)


def test_triplet_honours_the_cutout_mask_and_rejects_unknown_arguments(dataset_dir, tmp_path):
    ds, _ = data.Triplet_dataset(
        dataset_dir, batch_size=8, random_status=-1, random_cutout_mask_area=1.0, cache_dir=tmp_path
    )
    images = next(iter(ds))[0].numpy()
    assert np.allclose(images[:, int(0.7 * 112) :], MASK_VALUE)
    with pytest.raises(TypeError, match="random_cutout_mask_arae"):
        data.Triplet_dataset(dataset_dir, batch_size=8, random_cutout_mask_arae=1.0, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="random_cutout"):
        data.prepare_dataset(dataset_dir, batch_size=8, random_cutout=1.0, cache_dir=tmp_path)


def batch_labels(ds, batches):
    return [np.argmax(labels.numpy(), 1).tolist() for _, labels in ds.take(batches)]


def test_seeded_triplet_and_partial_fc_orders_repeat(dataset_dir, tmp_path):
    options = {"batch_size": 8, "image_per_class": 4, "random_status": -1, "cache_dir": tmp_path}
    first = batch_labels(data.Triplet_dataset(dataset_dir, seed=5, **options)[0], 4)
    assert first == batch_labels(data.Triplet_dataset(dataset_dir, seed=5, **options)[0], 4)
    assert first != batch_labels(data.Triplet_dataset(dataset_dir, seed=6, **options)[0], 4)
    ds, _ = data.Triplet_dataset(dataset_dir, seed=5, **options)
    images = [[class_of(image) for image in images.numpy()] for images, _ in ds.take(4)]
    assert images == first  # the images follow the labels
    options = {"batch_size": 4, "random_status": -1, "partial_fc_split": 2, "cache_dir": tmp_path}
    ds, _ = data.prepare_dataset(dataset_dir, seed=3, **options)
    first = [[class_of(image) for image in images.numpy()] for images, _ in ds.take(6)]
    ds, _ = data.prepare_dataset(dataset_dir, seed=3, **options)
    assert first == [[class_of(image) for image in images.numpy()] for images, _ in ds.take(6)]


def test_distillation_tfrecord_honours_is_train_seed_and_mixup(dataset_dir, tmp_path):
    names, classes, _, _, _ = data.pre_process_folder(dataset_dir, cache_dir=tmp_path)
    embeddings = np.eye(4, dtype=np.float32)[classes]  # the embedding of class c is one-hot c
    path = str(tmp_path / "distill.tfrecord")
    data.write_distill_tfrecord(path, names, classes, embeddings)
    ds, steps = data.prepare_dataset(path, batch_size=10, is_train=False, random_status=3, mixup_alpha=1.0)
    batches = [(images.numpy(), embs.numpy(), labels.numpy()) for images, (embs, labels) in ds]
    assert steps == 3 and [len(images) for images, _, _ in batches] == [10, 10, 4]  # every image once, in order
    assert np.concatenate([labels for _, _, labels in batches]).argmax(1).tolist() == classes.tolist()
    for images, embs, _ in batches:  # not augmented, not mixed
        assert [class_of(image) for image in images] == embs.argmax(1).tolist()
        assert np.allclose(images[:, :, :56], normalised(np.array([class_value(c) for c in embs.argmax(1)]))[
            :, None, None, None])

    def first_batches(seed):
        ds, _ = data.prepare_dataset(path, batch_size=8, random_status=-1, shuffle_buffer_size=24, seed=seed)
        return [embs.numpy().argmax(1).tolist() for _, (embs, _) in ds.take(3)]

    assert first_batches(1) == first_batches(1) and first_batches(1) != first_batches(2)
    tf.random.set_seed(3)
    ds, _ = data.prepare_dataset(path, batch_size=24, random_status=-1, mixup_alpha=1.0)
    images, (embs, labels) = next(iter(ds))
    assert (labels.numpy().max(1) < 1).any()  # mixed up
    assert np.allclose(embs.numpy(), labels.numpy())  # embeddings mixed like the labels
    expected_left = labels.numpy() @ np.array([normalised(class_value(i)) for i in range(4)])
    assert np.allclose(images.numpy()[:, 0, 0, 0], expected_left, atol=1e-5)
