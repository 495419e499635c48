"""eval_folder.py: register accuracy (original and leave-one-out), TPR at FPR, the .bin of hardest pairs, CLI."""

import os

import keras
import numpy as np
from PIL import Image

import eval_folder
from bin_files import load_bin


def saved_embeddings(tmp_path, embs, classes):
    path = tmp_path / "embs.npz"
    np.savez(path, embs=np.array(embs, dtype=np.float32), imm_classes=np.array(classes),
             filenames=np.array([f"img{i}.png" for i in range(len(classes))]))
    return eval_folder.Eval_folder(None, "unused", save_embeddings=str(path))


def test_register_accuracy_original_and_leave_one_out(tmp_path):
    # Class 0: (1, 0) and (0.6, 0.8); class 1: (0, 1) alone. Registers: (0.894, 0.447) and (0, 1).
    evaluator = saved_embeddings(tmp_path, [[1, 0], [0.6, 0.8], [0, 1]], [0, 0, 1])
    accuracy, score, label = evaluator.do_evaluation()
    assert accuracy == 1.0
    np.testing.assert_allclose(score, [0.8 / np.sqrt(0.8), 0, 0.8 / np.sqrt(0.8), 0.8, 0.4 / np.sqrt(0.8), 1],
                               atol=1e-6)
    np.testing.assert_array_equal(label, [1, 0, 1, 0, 0, 1])
    # Leave-one-out: image 0's own register is image 1 (cos 0.6 > 0), image 1's is image 0 (cos 0.6 < 0.8 to
    # class 1) → 1/2; image 2 is alone in its class and skipped.
    accuracy, score, label = evaluator.do_evaluation(leave_one_out=True)
    assert accuracy == 0.5
    np.testing.assert_allclose(score, [0.6, 0, 0.6, 0.8], atol=1e-6)
    np.testing.assert_array_equal(label, [1, 0, 1, 0])


def test_tpr_at_fpr_on_a_crafted_roc():
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.85, 0.5, 0.4, 0.3, 0.2, 0.1])
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    # FPR 1e-1 (< 1/6): only positives above the top negative 0.85 are accepted → TPR 1/4.
    assert eval_folder.tpr_at_fpr(score, label, [1e-1, 0.2]) == {1e-1: 0.25, 0.2: 1.0}


def test_cli_on_a_folder_writes_bin_and_plot(tmp_path, capsys):
    colours = {"a": [(255, 128, 128), (250, 140, 128), (240, 128, 150)], "b": [(128, 255, 128), (128, 250, 140)],
               "c": [(128, 128, 255), (140, 128, 250)]}
    for name, class_colours in colours.items():
        os.makedirs(tmp_path / "faces" / name)
        for index, colour in enumerate(class_colours):
            image = np.full((4, 4, 3), colour, dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / "faces" / name / f"{index}.png")
    inputs = keras.Input((4, 4, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)).save(tmp_path / "mean.keras")
    accuracy, loo_accuracy = eval_folder.main(
        ["-d", str(tmp_path / "faces"), "-m", str(tmp_path / "mean.keras"), "-S", str(tmp_path / "e.npz"),
         "-B", str(tmp_path / "pairs.bin"), "-P", str(tmp_path / "roc.png")])
    assert accuracy == loo_accuracy == 1.0
    assert os.path.isfile(tmp_path / "roc.png") and os.path.isfile(tmp_path / "e.npz")
    assert "top1 accuracy: 1.000000" in capsys.readouterr().out
    bins, issame = load_bin(tmp_path / "pairs.bin")
    # 3 + 1 + 1 positives and 2*3 + 2*2 negatives (b with a, c with its nearest earlier class), cut to 10 folds:
    # 0 positives and 1 negative per fold.
    assert len(issame) == 10 and not issame.any() and len(bins) == 20

    # One fold, 2 hardest positives then 3 hardest negatives, from the saved embeddings.
    evaluator = eval_folder.Eval_folder(None, "unused", save_embeddings=str(tmp_path / "e.npz"))
    names, scores, issame = evaluator.generate_eval_pair_bin(str(tmp_path / "one.bin"), pos_num=2, neg_num=3, nfold=1)
    all_positive = [evaluator.embs[i] @ evaluator.embs[j] for i in range(7) for j in range(i + 1, 7)
                    if evaluator.imm_classes[i] == evaluator.imm_classes[j]]
    np.testing.assert_allclose(scores[:2], sorted(all_positive)[:2], rtol=1e-6)
    assert list(issame) == [True, True, False, False, False] and scores[2] >= scores[3] >= scores[4]
    bins, stored_issame = load_bin(tmp_path / "one.bin")
    assert list(stored_issame) == list(issame) and bins[0].startswith(b"\x89PNG") and len(names) == 5


def test_non_finite_embeddings_name_the_folder(tmp_path):
    import pytest

    from evals import NonFiniteEmbeddingsError

    for path in ("a/0.png", "a/1.png", "b/0.png"):  # the evaluation needs 2 classes, one of 2 images or more
        os.makedirs((tmp_path / "faces" / path).parent, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(tmp_path / "faces" / path)

    def broken_model(images):
        return np.full((len(images), 2), np.nan)

    with pytest.raises(NonFiniteEmbeddingsError, match="faces"):
        eval_folder.Eval_folder(broken_model, str(tmp_path / "faces"))
