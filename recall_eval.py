"""Recall@k retrieval evaluation of a face model on a class-per-folder dataset, optionally per group.

Every image is embedded (`eval_folder.Eval_folder`: RGB, `preprocess.normalize`, the model's input size) and used
as a query against all the other images (`evals.recall_at_k`). A group mapping file assigns each class folder a
group (e.g. RFW's African / Asian / Caucasian / Indian), for a per-group breakdown:

- CSV with the columns `class` and `group`, one row per class folder; or
- JSON `{"class folder name": "group", ...}`.

CLI: `python recall_eval.py -m model.h5 -d DATA_DIR [--groups mapping.csv] [-k 1 5 10] [--within_groups]
[--plot recall.png]` prints the table (Recall@k in %) and saves a bar plot.
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

from atomic_io import save_figure_atomic
from eval_folder import Eval_folder
from evals import recall_at_k


def read_group_mapping(path):
    """`{class folder name: group name}` from a CSV (`class`, `group` columns) or JSON object file."""
    path = os.fspath(path)
    if path.lower().endswith(".json"):
        with open(path, encoding="utf-8") as file:
            mapping = json.load(file)
        if not isinstance(mapping, dict):
            raise ValueError(f"{path}: expected a JSON object {{class folder name: group}}")
        return {str(name): str(group) for name, group in mapping.items()}
    import pandas as pd

    table = pd.read_csv(path, dtype=str)
    if not {"class", "group"} <= set(table.columns):
        raise ValueError(f"{path}: a group CSV needs the columns 'class' and 'group', found {list(table.columns)}")
    return dict(zip(table["class"], table["group"], strict=True))


def groups_of_files(filenames, mapping, mapping_path):
    """The group of each image (N,) from its class folder name; raises ValueError naming unmapped classes."""
    classes = [Path(name).parent.name for name in filenames]
    unmapped = sorted(set(classes) - set(mapping))
    if unmapped:
        raise ValueError(f"{mapping_path}: no group for {len(unmapped)} class folder(s), e.g. {unmapped[:5]}")
    return np.array([mapping[name] for name in classes])


def plot_recalls(table, save_path):
    """Save a bar plot of the table's Recall@k columns (in %), one bar cluster per row; returns `save_path`."""
    import matplotlib.pyplot as plt

    recall_columns = [column for column in table.columns if column.startswith("R@")]
    axis = (table[recall_columns] * 100).plot.bar(rot=0, figsize=(max(6, 1.5 * len(table)), 4))
    axis.set_ylabel("Recall (%)")
    axis.set_ylim(0, 100)
    axis.grid(axis="y", alpha=0.3)
    axis.figure.tight_layout()
    save_figure_atomic(axis.figure, save_path)
    plt.close(axis.figure)
    return save_path


def parse_arguments(argv=None):
    """Command-line options of `python recall_eval.py`."""
    parser = argparse.ArgumentParser(description="Recall@k retrieval evaluation on a class-per-folder dataset.")
    parser.add_argument("-m", "--model", help="model file (.h5 / .keras); not needed with a saved -S file")
    parser.add_argument("-d", "--data_dir", required=True, help="folder with one sub-folder per identity")
    parser.add_argument("-g", "--groups", help="group mapping: CSV (class, group) or JSON {class: group}")
    parser.add_argument("-k", nargs="+", type=int, default=[1, 5, 10], help="k values (default 1 5 10)")
    parser.add_argument("--within_groups", action="store_true", help="search each group only among itself")
    parser.add_argument("-b", "--batch_size", type=int, default=64, help="batch size")
    parser.add_argument("-S", "--save_embeddings", default=None, help="embeddings .npz to write, or reload")
    parser.add_argument("--plot", default=None, help="save a bar plot of the table to this PNG")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: print the Recall@k table (in %) and optionally save its bar plot; returns the DataFrame."""
    args = parse_arguments(argv)
    if not args.model and not (args.save_embeddings and os.path.isfile(args.save_embeddings)):
        raise SystemExit("recall_eval.py: -m MODEL is needed (or an existing -S embeddings file)")
    evaluator = Eval_folder(args.model, args.data_dir, args.batch_size, args.save_embeddings)
    groups = None
    if args.groups:
        groups = groups_of_files(evaluator.filenames, read_group_mapping(args.groups), args.groups)
    table = recall_at_k(evaluator.embs, evaluator.imm_classes, k=args.k, groups=groups,
                        within_groups=args.within_groups)
    shown = table.copy()
    recall_columns = [column for column in table.columns if column.startswith("R@")]
    shown[recall_columns] = (shown[recall_columns] * 100).round(2)
    print(shown.to_string())
    if args.plot:
        print(f">>>> bar plot saved to {plot_recalls(table, args.plot)}")
    return table


if __name__ == "__main__":
    main()
