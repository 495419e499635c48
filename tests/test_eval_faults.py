"""Bad input to the evaluations (issue 17, items 3 and 10): every fault is named (file, and pair / line / image)
and either skipped with a warning or refused before any embedding work, never a raw TensorFlow / pandas / sklearn
traceback or a silently wrong figure."""

import logging
import os

import cv2
import numpy as np
import pytest
from conftest import build_tiny_embedding_model
from PIL import Image

import eval_folder
import evals
import IJB_evals
from bin_files import load_bin, make_bin, save_bin

# ----------------------------------------------------------------------------------------------------------------
# Item 3: an undecodable image in an evaluation .bin


def write_bin_with_bad_images(path, bad, pairs=12, size=32, seed=0):
    """A .bin of random image pairs (positives show one image twice) whose images at the indices `bad` (a dict
    index → bytes) are replaced. Returns (all images (2N, H, W, 3), issame (N,))."""
    rng = np.random.default_rng(seed)
    issame = np.arange(pairs) % 2 == 0
    images = rng.integers(0, 256, size=(2 * pairs, size, size, 3), dtype=np.uint8)
    images[1::2][issame] = images[0::2][issame]
    make_bin(list(zip(images[0::2], images[1::2], strict=True)), issame, path)
    bins, stored = load_bin(path)
    for index, data in bad.items():
        bins[index] = data
    save_bin(path, bins, stored)
    return images, issame


def expected_embeddings(model, images):
    """flip-summed embeddings of uint8 images, computed with Keras' predict."""
    normalized = (images.astype(np.float32) - 127.5) * 0.0078125
    return model.predict(normalized, verbose=0) + model.predict(normalized[:, :, ::-1], verbose=0)


def half_of_a_jpeg(size=32):
    encoded = cv2.imencode(".jpg", np.full((size, size, 3), 99, dtype=np.uint8))[1].tobytes()
    return encoded[: len(encoded) // 2]


def test_eval_callback_names_and_skips_pairs_with_an_undecodable_image(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="evals")
    path = tmp_path / "broken.bin"
    images, issame = write_bin_with_bad_images(path, {5: b"not an image at all", 14: half_of_a_jpeg()})
    model = build_tiny_embedding_model(size=32, embedding_size=8, pool=4)
    callback = evals.eval_callback(model, str(path), batch_size=8, PCA_acc=True)
    # Named at construction, before any training: the file, the pair and the image index, and the count.
    assert "broken.bin" in caplog.text and "pair 2 (image 5)" in caplog.text and "pair 7 (image 14)" in caplog.text
    assert "2 of 12 pairs" in caplog.text
    assert callback.skipped_pairs == [2, 7] and len(callback.test_issame) == 10 and len(callback.bins) == 20

    callback.on_epoch_end(0)  # used to raise TensorFlow's "Unknown image file format"
    kept = np.setdiff1d(np.arange(12), [2, 7])
    kept_images = images.reshape(12, 2, 32, 32, 3)[kept].reshape(20, 32, 32, 3)
    expected = expected_embeddings(model, kept_images)
    np.testing.assert_allclose(callback.embs, expected, rtol=1e-4, atol=1e-4)
    metrics = evals.evaluate_embeddings(expected, issame[kept])
    assert callback.cur_acc == pytest.approx(metrics["max_accuracy"])
    assert callback.metrics["accuracy_mean"] == pytest.approx(metrics["accuracy_mean"])
    assert callback.embedding_function().experimental_get_tracing_count() == 1


def test_a_bin_without_any_decodable_pair_is_refused_at_construction(tmp_path):
    path = tmp_path / "hopeless.bin"
    write_bin_with_bad_images(path, {index: b"junk" for index in range(0, 8, 2)}, pairs=4)
    with pytest.raises(ValueError, match=r"hopeless\.bin.*no pair"):
        evals.eval_callback(build_tiny_embedding_model(size=32, embedding_size=8, pool=4), str(path))


def test_evals_cli_skips_the_same_pairs(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="evals")
    path = tmp_path / "broken.bin"
    images, issame = write_bin_with_bad_images(path, {9: b"\x89PNG but nothing after"}, pairs=20)
    model = build_tiny_embedding_model(size=32, embedding_size=8, pool=4)
    model.save(tmp_path / "tiny.keras")
    table = evals.main(["-m", str(tmp_path / "tiny.keras"), "-t", str(path), "-F"])
    assert "pair 4 (image 9)" in caplog.text
    kept = np.setdiff1d(np.arange(20), [4])
    normalized = (images.reshape(20, 2, 32, 32, 3)[kept].reshape(38, 32, 32, 3) - 127.5) * 0.0078125
    expected = evals.evaluate_embeddings(model.predict(normalized.astype(np.float32), verbose=0), issame[kept])
    assert table.loc["broken", "accuracy_mean"] == pytest.approx(expected["accuracy_mean"])
    assert table.loc["broken", "max_accuracy"] == pytest.approx(expected["max_accuracy"])


# ----------------------------------------------------------------------------------------------------------------
# Item 10: IJB meta files and images

IJB_IMAGES = [(f"img{index}.jpg", 1 + index // 2, 10 + index // 2, 1.0) for index in range(6)]
IJB_PAIRS = [(1, 2, 0), (1, 3, 0), (2, 3, 1)]


def write_ijb_layout(root, images=IJB_IMAGES, pairs=IJB_PAIRS, with_images=True):
    """An IJB-B layout with 112x112 JPEG crops whose landmarks are the ArcFace template."""
    from face_align import ARCFACE_TEMPLATE

    meta = root / "IJBB" / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    points = " ".join(f"{value:.4f}" for value in ARCFACE_TEMPLATE.ravel())
    (meta / "ijbb_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, _ in images))
    (meta / "ijbb_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    (meta / "ijbb_name_5pts_score.txt").write_text("".join(f"{n} {points} {s}\n" for n, _, _, s in images))
    crops = root / "IJBB" / "loose_crop"
    crops.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name, *_ in images if with_images else []:
        cv2.imwrite(str(crops / name), cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), np.uint8), (9, 9), 3))
    return root


def cut_last_line(path, keep_fields):
    """Cut the last line of a meta file after `keep_fields` fields (a write interrupted mid-line)."""
    lines = path.read_text().splitlines()
    lines[-1] = " ".join(lines[-1].split(" ")[:keep_fields])
    path.write_text("\n".join(lines))


@pytest.mark.parametrize(("name", "keep_fields", "line"), [
    ("ijbb_face_tid_mid.txt", 2, 6), ("ijbb_template_pair_label.txt", 2, 3), ("ijbb_name_5pts_score.txt", 7, 6)])
def test_ijb_meta_file_cut_mid_line_is_named_with_its_line(tmp_path, name, keep_fields, line):
    write_ijb_layout(tmp_path, with_images=False)
    cut_last_line(tmp_path / "IJBB" / "meta" / name, keep_fields)
    with pytest.raises(ValueError, match=rf"{name}, line {line}: "):
        IJB_evals.extract_IJB_data_11(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "cache"))


def test_ijb_meta_file_with_a_non_number_is_named_with_its_line(tmp_path):
    write_ijb_layout(tmp_path, with_images=False)
    pair_file = tmp_path / "IJBB" / "meta" / "ijbb_template_pair_label.txt"
    pair_file.write_text("1 2 0\n\n1 x 0\n2 3 1\n")  # a blank line 2 is skipped, the bad line is line 3
    with pytest.raises(ValueError, match=r"ijbb_template_pair_label\.txt, line 3: .*'x'"):
        IJB_evals.extract_IJB_data_11(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "cache"))


def test_empty_ijb_pair_file_is_named(tmp_path):
    write_ijb_layout(tmp_path, with_images=False)
    (tmp_path / "IJBB" / "meta" / "ijbb_template_pair_label.txt").write_text("")
    with pytest.raises(ValueError, match=r"ijbb_template_pair_label\.txt: empty"):
        IJB_evals.extract_IJB_data_11(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "cache"))


def test_ijb_labels_other_than_0_and_1_are_named(tmp_path):
    write_ijb_layout(tmp_path, with_images=False)
    (tmp_path / "IJBB" / "meta" / "ijbb_template_pair_label.txt").write_text("1 2 0\n1 3 2\n")
    with pytest.raises(ValueError, match=r"ijbb_template_pair_label\.txt, line 2: .*label"):
        IJB_evals.extract_IJB_data_11(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "cache"))


def test_ijb_1n_csv_cut_mid_line_is_named(tmp_path):
    write_ijb_layout(tmp_path, with_images=False)
    meta = tmp_path / "IJBB" / "meta"
    for name in ("ijbb_1N_gallery_S1.csv", "ijbb_1N_gallery_S2.csv", "ijbb_1N_probe_mixed.csv"):
        (meta / name).write_text("TEMPLATE_ID,SUBJECT_ID\n1,100\n2,200\n")
    (meta / "ijbb_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID\n1,100\n3")
    with pytest.raises(ValueError, match=r"ijbb_1N_probe_mixed\.csv, line 3: "):
        IJB_evals.extract_gallery_prob_data(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "cache"))


class CountingModel:
    """A callable model (mean colour per image) that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return np.asarray(images, dtype=np.float32).reshape(len(images), -1, 3).mean(axis=1)


def test_missing_ijb_images_are_listed_before_any_embedding(tmp_path):
    write_ijb_layout(tmp_path)
    os.remove(tmp_path / "IJBB" / "loose_crop" / "img4.jpg")
    os.remove(tmp_path / "IJBB" / "loose_crop" / "img5.jpg")
    model = CountingModel()
    with pytest.raises(FileNotFoundError, match=r"2 of 6 IJB images are missing.*img4\.jpg.*img5\.jpg"):
        IJB_evals.IJB_test(model, str(tmp_path), "IJBB", batch_size=2, cache_dir=str(tmp_path / "cache"))
    assert model.calls == 0  # nothing embedded, then lost


def test_half_truncated_ijb_image_is_named_before_any_embedding(tmp_path):
    write_ijb_layout(tmp_path)
    image = tmp_path / "IJBB" / "loose_crop" / "img3.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    model = CountingModel()
    with pytest.raises(ValueError, match=r"1 of 6 IJB images are truncated or not images.*img3\.jpg"):
        IJB_evals.IJB_test(model, str(tmp_path), "IJBB", batch_size=2, cache_dir=str(tmp_path / "cache"))
    assert model.calls == 0


def test_intact_ijb_images_still_embed(tmp_path):
    write_ijb_layout(tmp_path)
    test = IJB_evals.IJB_test(CountingModel(), str(tmp_path), "IJBB", batch_size=4, cache_dir=str(tmp_path / "c"))
    assert test.embs.shape == (6, 3) and test.embs_f.shape == (6, 3)
    assert np.isfinite(test.run_model_test_single()).all()


def test_ijb_roc_with_labels_of_one_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="both"):
        IJB_evals.plot_roc_and_calculate_tpr([np.array([0.1, 0.5])], names=["x"], label=np.array([1, 1]))


# ----------------------------------------------------------------------------------------------------------------
# Item 10: eval_folder


def write_faces(root, counts, size=8):
    """A class-per-folder dataset: `counts[name]` PNG images of distinct colours in each class folder."""
    rng = np.random.default_rng(1)
    for name, count in counts.items():
        os.makedirs(root / name, exist_ok=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


def mean_colour(images):
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1, 3).mean(axis=1) - 127.5


def test_eval_folder_with_one_class_is_refused(tmp_path):
    write_faces(tmp_path / "faces", {"only": 3})
    model = CountingModel()
    with pytest.raises(ValueError, match=r"faces.*1 class.*at least 2 classes"):
        eval_folder.Eval_folder(model, str(tmp_path / "faces"))
    assert model.calls == 0


def test_eval_folder_with_one_image_per_class_is_refused(tmp_path):
    write_faces(tmp_path / "faces", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(ValueError, match=r"faces.*one image.*at least 2 images"):
        eval_folder.Eval_folder(mean_colour, str(tmp_path / "faces"))


def test_saved_embeddings_of_one_class_are_refused(tmp_path):
    path = tmp_path / "one.npz"
    np.savez(path, embs=np.eye(3, dtype=np.float32), imm_classes=np.zeros(3, np.int64),
             filenames=np.array(["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"one\.npz.*1 class"):
        eval_folder.Eval_folder(None, "unused", save_embeddings=str(path))


def test_eval_folder_refuses_to_write_a_bin_without_pairs(tmp_path):
    write_faces(tmp_path / "faces", {"a": 2, "b": 2})
    evaluator = eval_folder.Eval_folder(mean_colour, str(tmp_path / "faces"))
    with pytest.raises(ValueError, match=r"empty\.bin.*no pair"):
        evaluator.generate_eval_pair_bin(str(tmp_path / "empty.bin"))  # 2 positives, 4 negatives: < 10 folds
    assert not os.path.exists(tmp_path / "empty.bin")


def test_eval_folder_names_and_skips_a_corrupt_image(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="eval_folder")
    faces = write_faces(tmp_path / "faces", {"a": 3, "b": 2, "c": 2})
    (faces / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not a PNG")
    evaluator = eval_folder.Eval_folder(mean_colour, str(faces))
    assert "a/1.png" in caplog.text.replace(os.sep, "/") and "1 of 7" in caplog.text
    assert len(evaluator.filenames) == 6 and not any(name.endswith("a/1.png") for name in evaluator.filenames)
    assert evaluator.imm_classes.tolist() == [0, 0, 1, 1, 2, 2] and evaluator.embs.shape == (6, 3)


# ----------------------------------------------------------------------------------------------------------------
# The command-line tools exit with the message, naming the file


def test_clis_exit_with_the_message_naming_the_file(tmp_path):
    write_ijb_layout(tmp_path / "ijb", with_images=False)
    cut_last_line(tmp_path / "ijb" / "IJBB" / "meta" / "ijbb_face_tid_mid.txt", 1)
    with pytest.raises(SystemExit, match=r"ijbb_face_tid_mid\.txt, line 6"):
        IJB_evals.main(["-d", str(tmp_path / "ijb"), "-R", str(tmp_path / "unused.npz"),
                        "-C", str(tmp_path / "cache")])

    model = build_tiny_embedding_model(size=32, embedding_size=8, pool=4)
    model.save(tmp_path / "tiny.keras")
    write_bin_with_bad_images(tmp_path / "hopeless.bin", {0: b"junk", 3: b"junk"}, pairs=2)
    with pytest.raises(SystemExit, match=r"hopeless\.bin: no pair left"):
        evals.main(["-m", str(tmp_path / "tiny.keras"), "-t", str(tmp_path / "hopeless.bin")])

    write_faces(tmp_path / "faces", {"only": 2})
    with pytest.raises(SystemExit, match=r"faces: the images span 1 class"):
        eval_folder.main(["-d", str(tmp_path / "faces"), "-m", str(tmp_path / "tiny.keras")])


def test_an_old_meta_cache_of_a_damaged_file_is_rebuilt(tmp_path):
    # A cache written by a version that read damaged files silently must not hide the damage now.
    write_ijb_layout(tmp_path, with_images=False)
    cut_last_line(tmp_path / "IJBB" / "meta" / "ijbb_name_5pts_score.txt", 7)
    paths = IJB_evals.meta_file_paths(str(tmp_path), "IJBB")
    sources = [paths["media"], paths["pairs"], paths["landmarks"]]
    old_signature = ";".join(f"{path}:{os.path.getsize(path)}:{os.path.getmtime(path)}" for path in sources)
    cache = IJB_evals.cache_file(str(tmp_path / "cache"), str(tmp_path), "IJBB", "meta")
    os.makedirs(os.path.dirname(cache))
    np.savez(cache, signature=old_signature, landmarks=np.full((6, 5, 2), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"ijbb_name_5pts_score\.txt, line 6"):
        IJB_evals.extract_IJB_data_11(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "cache"))
