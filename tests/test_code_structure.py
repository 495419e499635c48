"""The structure rules of the library, checked on its source: one definition per idea, small functions, imports
that follow the layers (models → losses → data → training; evaluation without training), every private Keras /
TensorFlow access in keras_compat.py, every module in the README's module map."""

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted(path for path in REPO_ROOT.glob("*.py"))
MAX_FUNCTION_LINES = 60
SINGLE_DEFINITIONS = ("l2_normalize", "threshold_at_far", "normalize", "embed_images")
LAYERS = {
    "models and losses import no data, training or evaluation module": (
        ("backbones", "GhostFaceNets", "heads", "losses"),
        ("data", "train", "myCallbacks", "evals", "IJB_evals", "eval_folder", "inference", "datasets",
         "folder_scan", "image_decode", "augment", "tfrecords", "embedding"),
    ),
    "evaluation imports no training module": (
        ("evals", "IJB_evals", "eval_folder", "embedding", "inference"),
        ("train", "myCallbacks", "schedule", "training_heads"),
    ),
    "data imports no model, loss, training or evaluation module": (
        ("data", "datasets", "folder_scan", "image_decode", "augment", "tfrecords"),
        ("GhostFaceNets", "backbones", "heads", "losses", "train", "myCallbacks", "evals"),
    ),
}


def parsed(path):
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def top_level_definitions(name):
    """Modules that define function `name` at module level or as a method-free module function."""
    return [path.name for path in LIBRARY for node in parsed(path).body
            if isinstance(node, ast.FunctionDef) and node.name == name]


def imported_modules(path):
    """Names of the modules `path` imports (top level and inside functions)."""
    names = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("name", SINGLE_DEFINITIONS)
def test_one_definition_each(name):
    assert len(top_level_definitions(name)) == 1, f"{name} is defined in {top_level_definitions(name)}"


def test_preprocessing_constant_only_in_preprocess():
    holders = [path.name for path in LIBRARY if "127.5" in path.read_text(encoding="utf-8")]
    assert holders == ["preprocess.py"], holders


def test_no_long_functions():
    long_functions = [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in LIBRARY for node in ast.walk(parsed(path))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long_functions, long_functions


@pytest.mark.parametrize("rule", sorted(LAYERS))
def test_layers(rule):
    importers, forbidden = LAYERS[rule]
    violations = {name: sorted(imported_modules(REPO_ROOT / f"{name}.py") & set(forbidden))
                  for name in importers if (REPO_ROOT / f"{name}.py").exists()}
    assert not any(violations.values()), violations


def private_attribute_accesses(path):
    """`obj._name` accesses in `path` where `obj` is not `self`/`cls` (another object's private attribute, such as
    a Keras optimizer's `_var_key`), and every `keras.src` import."""
    found = []
    for node in ast.walk(parsed(path)):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras.src"):
            found.append(f"{path.name}:{node.lineno} from {node.module}")
    return found


def test_private_keras_access_only_in_keras_compat():
    offenders = [access for path in LIBRARY if path.name != "keras_compat.py"
                 for access in private_attribute_accesses(path)]
    assert not offenders, offenders


def test_every_module_in_the_readme_module_map():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [path.name for path in LIBRARY if f"`{path.name}`" not in readme]
    assert not missing, f"modules missing from README's module map: {missing}"
