"""The command line end to end, as a user runs it: real processes, real photos, real model."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import settings
from core.storage import Catalog

REPO = Path(__file__).resolve().parents[1]


def run(*args, workspace=None, check=True):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "core"] + (["--workspace", str(workspace)] if workspace else []) + list(args)
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_everywhere():
    assert "import" in run("--help").stdout
    for command in ("import", "embed", "train", "predict", "export", "status", "versions", "evaluate"):
        assert "usage" in run(command, "--help").stdout


def test_full_batch_workflow(tmp_path, demo_dir):
    workspace = tmp_path / "ws"
    status = last_json(run("status", "--json", workspace=workspace))
    assert status["products"] == 0 and status["active_model"] is None

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    imported = run("import", str(demo_dir), str(bad), workspace=workspace)
    assert f"rejected: {bad}: not an image" in imported.stdout
    assert "80 added" in imported.stdout

    embedded = last_json(run("embed", workspace=workspace))
    assert embedded["computed"] == 80 and embedded["images_per_second"] > 0
    assert embedded["runtime"] == settings.int8_runtime(), "says what ran the 8-bit graph on this machine"
    assert last_json(run("embed", workspace=workspace))["cached"] == 80

    refused = run("train", "--epochs", "40", workspace=workspace, check=False)
    assert refused.returncode == 2 and "--hidden-units" in refused.stderr, "epochs do nothing for the linear head"
    trained = last_json(run("train", workspace=workspace))
    assert trained["model_version"] == 1 and trained["classes"] == 10 and trained["predicted"] == 80

    status = last_json(run("status", "--json", workspace=workspace))
    assert (status["products"], status["labelled"], status["categories"]) == (80, 80, 10)
    assert status["active_model"]["version"] == 1

    assert last_json(run("predict", workspace=workspace))["predicted"] == 80
    exported = last_json(run("export", "--output", str(tmp_path / "out"), workspace=workspace))
    names = sorted(Path(p).name for p in exported["written"])
    assert [name for name in names if not name.endswith((".tflite", ".onnx"))] == [
        "embeddings.parquet", "labels.csv", "labels.parquet", "productlens_classifier.keras",
        "productlens_classifier_savedmodel"]
    assert ("productlens_classifier.tflite" in names) != ("tflite" in exported["not_written"])
    assert ("productlens_classifier.onnx" in names) != ("onnx" in exported["not_written"])
    # Formats that do not convert say why, instead of failing the export or passing in silence.
    assert set(exported["not_written"]) <= {"tflite", "onnx"}
    assert all(reason.startswith(("failed:", "skipped:")) for reason in exported["not_written"].values())
    with open(tmp_path / "out" / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    labels = Catalog(workspace).current_labels()
    assert sorted(int(r["product_id"]) for r in rows) == sorted(labels)
    assert all(r["label"] == labels[int(r["product_id"])] and r["predicted_label"] for r in rows)

    versions = last_json(run("versions", workspace=workspace))
    assert [v["version"] for v in versions] == [1] and versions[0]["active"]


@pytest.mark.parametrize("args, message", [
    (["import", "/no/such/folder"], "no photo could be imported"),
    (["embed"], "no catalogue"),
    (["train"], "no catalogue"),
    (["versions", "--activate", "7"], "no catalogue"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = run(*args, workspace=tmp_path / "empty", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_a_bug_is_not_dressed_up_as_a_user_error(tmp_path, monkeypatch):
    """Only ProductLensError becomes `error: …`; anything else keeps its traceback."""
    from core import cli

    def broken(_args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "command_status", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["--workspace", str(tmp_path / "ws"), "status"])


def test_default_configuration_end_to_end(tmp_path, demo_dir):
    """The shipped defaults (Lite0 + Lite2, multi pooling, 4 views, 8-bit on a CPU), not the suite's fast
    backbone: import -> embed -> train -> predict -> export, and the export reproduces the stored predictions."""
    import onnxruntime

    from core import settings
    from core.features import Embedder
    from core.jobs.export import classifier_inputs

    workspace = tmp_path / "ws"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PRODUCTLENS_")}

    def cli(*args):
        result = subprocess.run([sys.executable, "-m", "core", "--workspace", str(workspace), *args],
                                capture_output=True, text=True, cwd=REPO, timeout=900,
                                env=dict(env, TF_CPP_MIN_LOG_LEVEL="3"))
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    cli("import", str(demo_dir), "--json")
    embedded = cli("embed")
    assert embedded["embedding"] == "efficientnet_lite0_lite2+multi+noflip+int8" and embedded["computed"] == 80
    trained = cli("train")
    assert trained["predicted"] == 80 and trained["classes"] == 10
    cli("predict")
    written = cli("export", "model", "--output", str(tmp_path / "out"))["written"]
    catalog = Catalog(workspace)
    version = catalog.active_model_version()
    assert (version.embedding_key, version.prediction_key) == ("efficientnet_lite0_lite2+multi+noflip+int8",
                                                             "efficientnet_lite0_lite2+multi+noflip+int8#tta4")
    assert version.params["embedder"]["views"] == settings.DEFAULT_VIEWS == 4
    assert version.params["embedder"]["precision"] == "int8"
    int8_file = next(path for path in written if path.endswith(".int8.onnx"))
    session = onnxruntime.InferenceSession(int8_file)
    products = catalog.products()[::20]
    inputs = classifier_inputs(Embedder(backbone="efficientnet_lite0_lite2", views=4),
                               [(catalog.image_path(p), p.sha256) for p in products])
    stored = catalog.predictions(version.id)
    for product, probabilities in zip(products, session.run(None, {"photo_and_views": inputs})[0]):
        assert version.classes[int(np.argmax(probabilities))] == stored[product.id]["label"]
        assert abs(float(probabilities.max()) - stored[product.id]["confidence"]) < 2e-3


def test_empty_catalogue_errors(tmp_path):
    workspace = tmp_path / "ws"
    run("status", workspace=workspace)  # creates an empty catalogue
    for command, message in (("embed", "empty"), ("train", "no labelled products"), ("predict", "no trained model")):
        result = run(command, workspace=workspace, check=False)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_workspace_from_environment(tmp_path, demo_dir):
    env_workspace = tmp_path / "from-env"
    env = dict(os.environ, PRODUCTLENS_WORKSPACE=str(env_workspace), TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-m", "core", "import", str(demo_dir / "Lemon")], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=300)
    assert (env_workspace / "catalog.sqlite").is_file()


# The demo categories as a three-level tree, the way a catalogue's folders often are.
DEMO_TREE = {"Banana": "Fruit", "Granny-Smith": "Fruit/Apple", "Lemon": "Fruit", "Orange": "Fruit",
             "Pineapple": "Fruit", "Carrots": "Vegetables", "Red-Bell-Pepper": "Vegetables/Pepper",
             "Zucchini": "Vegetables", "Arla-Standard-Milk": "Packages/Milk", "Oatly-Oat-Milk": "Packages/Oat-Milk"}


def nested(split: Path, target: Path) -> Path:
    for category in split.iterdir():
        shutil.copytree(category, target / DEMO_TREE[category.name] / category.name)
    return target


def test_evaluate_on_held_out_photos_at_every_level_of_the_folder_tree(tmp_path, demo_split):
    train_dir, test_dir = (nested(split, tmp_path / split.name) for split in demo_split)
    predictions = tmp_path / "predictions.csv"
    result = last_json(run("evaluate", "--train", str(train_dir), "--test", str(test_dir),
                           "--predictions-csv", str(predictions)))
    assert (result["n_train"], result["n_test"], result["n_classes"]) == (60, 20, 10)
    assert result["backbone"] == "efficientnet_lite0"
    assert result["accuracy"] >= 0.8
    for key in ("embed_seconds", "train_seconds", "images_per_second", "peak_memory_mb"):
        assert result[key] > 0
    with open(predictions) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and set(rows[0]) == {"path", "true_label", "predicted_label", "confidence", "answer"}
    right = sum(r["true_label"] == r["predicted_label"] for r in rows)
    assert right / len(rows) == pytest.approx(result["accuracy"])
    assert all(Path(r["path"]).parent.name == r["true_label"] for r in rows)
    # Fruit/Vegetables/Packages, then Apple/Milk/…, then the categories themselves (the classifier's top-1).
    assert [level["level"] for level in result["levels"]] == [0, 1, 2]
    assert result["levels"][-1]["correct"] == right and result["levels"][0]["accuracy"] >= 0.9
    everything = result["coverage"][0]
    assert everything["threshold"] == 0.0 and everything["fine_coverage"] == 1.0
    assert everything["fine_accuracy"] == pytest.approx(result["accuracy"])
    for row in rows:  # an answer is the prediction, or a coarser category of it ending in "?"
        assert row["answer"] == row["predicted_label"] or row["answer"].endswith("› ?") or row["answer"] == "?"


def test_categories_from_folders_and_the_command_line(tmp_path, demo_split):
    workspace = tmp_path / "ws"
    run("import", str(nested(demo_split[1], tmp_path / "catalogue")), workspace=workspace)
    rows = last_json(run("categories", "--json", workspace=workspace))
    by_path = {row["path"]: (row["products"], row["products_below"]) for row in rows}
    assert by_path["Fruit"] == (0, 10) and by_path["Fruit › Apple"] == (0, 2)
    assert by_path["Fruit › Apple › Granny-Smith"] == (2, 2) and by_path["Packages › Milk"] == (0, 2)
    assert [row["path"] for row in rows][:3] == ["Fruit", "Fruit › Apple", "Fruit › Apple › Granny-Smith"]
    run("categories", "Granny-Smith", "--parent", "Fruit", workspace=workspace)
    refused = run("categories", "Fruit", "--parent", "Granny-Smith", workspace=workspace, check=False)
    assert refused.returncode == 2 and "'Granny-Smith' cannot be the parent of 'Fruit'" in refused.stderr
    tree = tmp_path / "tree.csv"
    tree.write_text("category,parent\nPackages,Groceries\nGroceries,Packages\n")
    imported = run("import", str(tree), workspace=workspace)
    assert "rejected: tree.csv line 3: category parent not set" in imported.stdout
    assert "1 category parents set" in imported.stdout, "a tree CSV sets parents; its bad line is named"
    tree.write_text("category,parent\nGroceries,Packages\n")
    looping = run("import", str(tree), workspace=workspace, check=False)
    assert looping.returncode == 2 and looping.stderr == "error: no category parent could be set\n"
    listing = run("categories", workspace=workspace).stdout.splitlines()
    assert "  Granny-Smith  (2 products)" in listing and "Fruit  (0 products, 10 with the categories under it)" \
        in listing and "  Packages  (0 products, 4 with the categories under it)" in listing


def _as(user, password, *args, workspace, stdin=None):
    """Run a command as ``user``; the password comes from $PRODUCTLENS_PASSWORD, or stdin when ``stdin``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("PRODUCTLENS_PASSWORD", None)
    if stdin is None and password is not None:
        env["PRODUCTLENS_PASSWORD"] = password
    command = [sys.executable, "-m", "core", "--workspace", str(workspace), *args]
    if user:
        command += ["--user", user] + (["--password-stdin"] if stdin is not None else [])
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300, input=stdin)


def test_team_corrections_and_undo_never_overwrite_each_other(tmp_path, demo_dir, database):
    """On SQLite and on PostgreSQL (the ``database`` fixture sets $PRODUCTLENS_DATABASE for every command)."""
    workspace = tmp_path / "ws"
    run("import", str(demo_dir / "Lemon"), "--label", "Carrots", workspace=workspace)
    for name, role in [("root", "admin"), ("alice", "labeller"), ("bob", "labeller"), ("vera", "viewer")]:
        added = _as(None, None, "users", "add", name, "--role", role, "--password-stdin", workspace=workspace,
                    stdin=f"{name}-password\n")
        assert added.returncode == 0, added.stderr
    listed = last_json(run("users", "list", "--json", workspace=workspace))
    assert [(u["name"], u["role"]) for u in listed] == [("alice", "labeller"), ("bob", "labeller"),
                                                        ("root", "admin"), ("vera", "viewer")]
    product = Catalog(workspace).product_ids()[6]

    # Alice: Carrots -> Leek; Bob (who saw Leek): Leek -> Asparagus; Alice presses Undo.
    assert _as("alice", "alice-password", "label", str(product), "Leek", "--expect", "Carrots",
               workspace=workspace).returncode == 0
    assert _as("bob", "bob-password", "label", str(product), "Asparagus", "--expect", "Leek",
               workspace=workspace, stdin="bob-password\n").returncode == 0
    undo = _as("alice", "alice-password", "undo", workspace=workspace)
    assert undo.returncode == 3, "a refused change exits with code 3"
    assert undo.stderr.count("\n") == 1 and "bob changed it to Asparagus" in undo.stderr, undo.stderr
    assert Catalog(workspace).current_label(product) == "Asparagus", "Bob's change survives Alice's undo"

    stale = _as("alice", "alice-password", "label", str(product), "Kale", "--expect", "Leek", workspace=workspace)
    assert stale.returncode == 3 and "bob changed it to Asparagus" in stale.stderr

    for user, password, args, message in [
        ("vera", "vera-password", ["label", str(product), "Kale"], "vera is a viewer: label needs the labeller role"),
        ("alice", "not-her-password", ["label", str(product), "Kale"], "wrong account name or password"),
        (None, None, ["label", str(product), "Kale"], "this workspace has accounts: add --user NAME"),
        ("alice", "alice-password", ["label", "99999", "Kale"], "no product with id 99999"),
    ]:
        refused = _as(user, password, *args, workspace=workspace)
        assert refused.returncode == 2 and refused.stderr == f"error: {message}\n" or message in refused.stderr, (
            refused.stderr)
        assert "Traceback" not in refused.stderr
    assert Catalog(workspace).current_label(product) == "Asparagus"
    history = last_json(run("history", "--product", str(product), "--json", workspace=workspace))
    assert [(h["who"], h["to"]) for h in history] == [("bob", "Asparagus"), ("alice", "Leek"), (None, "Carrots")]


def test_without_accounts_the_local_user_labels_by_name_and_undoes_only_their_own(tmp_path, demo_dir):
    workspace = tmp_path / "ws"
    run("import", str(demo_dir / "Lemon"), "--label", "Lemon", workspace=workspace)
    first, second = Catalog(workspace).product_ids()[:2]
    assert "no accounts" in run("users", "list", workspace=workspace).stdout
    run("label", str(first), "Lime", "--user", "ana", workspace=workspace)
    assert last_json(run("undo", workspace=workspace)) == {"undone": 0, "conflicts": 0}, "not ana's action"
    run("label", str(second), "Lime", workspace=workspace)
    assert last_json(run("undo", workspace=workspace)) == {"undone": 1, "conflicts": 0}
    labels = Catalog(workspace).current_labels()
    assert (labels[first], labels[second]) == ("Lime", "Lemon")


@pytest.mark.parametrize("args, message", [
    (["predict", "--top-k", "0"], "must be at least 1"),
    (["predict", "--top-k", "-3"], "must be at least 1"),
    (["similar", "1", "--k", "-1"], "must be at least 1"),
    (["suspicious", "--folds", "1"], "must be at least 2"),
    (["history", "--limit", "0"], "must be at least 1"),
])
def test_out_of_range_numbers_are_usage_errors(tmp_path, args, message):
    result = run(*args, workspace=tmp_path / "ws", check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_export_onto_a_file_and_forged_history_lines_are_refused(tmp_path, demo_dir):
    workspace = tmp_path / "ws"
    run("import", str(demo_dir / "Lemon"), "--label", "Lemon", workspace=workspace)
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    result = run("export", "labels", "--output", str(existing), workspace=workspace, check=False)
    assert result.returncode == 2 and "is a file" in result.stderr and "Traceback" not in result.stderr
    assert existing.read_text() == "keep me"
    # A label written before names were checked (or by another tool) must not print as extra history lines.
    catalog = Catalog(workspace)
    with catalog.transaction() as connection:
        connection.exec_driver_sql("INSERT INTO labels (product_id, label, previous_label, source, author, created_at) "
                                   "VALUES (1, ?, 'Lemon', 'human', 'mallory', '2026-01-01T00:00:00')",
                                   ("Lime\n2026-01-01 00:00:00  root  human  #1 x: a -> b",))
    lines = run("history", "--product", "1", workspace=workspace).stdout.strip().splitlines()
    assert len(lines) == 2 and "Lime\\n2026" in lines[0]


def test_train_says_which_labelled_products_it_had_to_skip(tmp_path, demo_dir):
    workspace = tmp_path / "ws"
    run("import", str(demo_dir / "Lemon"), "--label", "Lemon", workspace=workspace)
    run("import", str(demo_dir / "Banana"), "--label", "Banana", workspace=workspace)
    catalog = Catalog(workspace)
    catalog.image_path(catalog.product_ids()[0]).unlink()  # a photo lost from the workspace
    catalog.close()
    trained = run("train", "--views", "0", "--quiet", workspace=workspace)
    assert "skipped: 1 labelled products without features" in trained.stderr
    assert last_json(trained)["n_train"] == 15 and last_json(trained)["n_skipped"] == 1


def test_embed_on_ray_and_fine_tune_from_the_command_line(tmp_path, demo_dir):
    """`import` and `embed --engine ray` store what they store in-process; `train --fine-tune` makes a
    fine-tuned version."""
    workspace = tmp_path / "ws"
    photos = [str(path) for category in ("Banana", "Lemon") for path in sorted((demo_dir / category).glob("*.jpg"))[:3]]
    imported = last_json(run("import", *photos, "--engine", "ray", "--workers", "1", "--json", workspace=workspace))
    assert (imported["added"], imported["rejected"]) == (6, 0)
    embedded = last_json(run("embed", "--engine", "ray", "--workers", "1", "--quiet", workspace=workspace))
    assert embedded["computed"] == 6 and embedded["failed"] == 0
    catalog = Catalog(workspace)
    key = embedded["embedding"]
    ids, on_ray = catalog.embeddings(key)
    assert len(ids) == 6
    catalog.set_labels([(int(pid), "Banana" if index < 3 else "Lemon") for index, pid in enumerate(ids)])
    trained = last_json(run("train", "--fine-tune", "--fine-tune-epochs", "1", "--quiet", workspace=workspace))
    assert trained["fine_tune_seconds"] >= 0 and trained["predicted"] == 6
    version = Catalog(workspace).active_model_version()
    assert version.metrics["fine_tuned"] and "+weights:backbone-" in version.embedding_key
    # In-process embedding finds nothing left to do under the key Ray filled.
    assert last_json(run("embed", "--quiet", workspace=workspace))["computed"] == 0
    # Photos added after training: `predict` embeds each with the version's own (fine-tuned) backbone, in
    # this process or on Ray, then predicts every product.
    later = [str(sorted((demo_dir / category).glob("*.jpg"))[3]) for category in ("Banana", "Lemon")]
    run("import", later[0], workspace=workspace)
    predicted = last_json(run("predict", "--quiet", workspace=workspace))
    assert (predicted["embedded"], predicted["predicted"], predicted["not_embedded"]) == (1, 7, 0)
    run("import", later[1], workspace=workspace)
    predicted = last_json(run("predict", "--engine", "ray", "--workers", "1", workspace=workspace))
    assert (predicted["embedded"], predicted["predicted"], predicted["not_embedded"]) == (1, 8, 0)
    new_ids = sorted(set(Catalog(workspace).embedded_product_ids(version.prediction_key)) - set(ids.tolist()))
    stored = Catalog(workspace).predictions(version.id)
    assert len(new_ids) == 2 and all(stored[pid]["label"] in ("Banana", "Lemon") for pid in new_ids)


def test_the_database_flag_points_every_command_at_postgresql(tmp_path, demo_dir, postgres_server):
    url = postgres_server.new_database()
    try:
        workspace = tmp_path / "ws"
        run("--database", url, "import", str(demo_dir / "Lemon"), "--label", "Lemon", workspace=workspace)
        status = last_json(run("--database", url, "status", "--json", workspace=workspace))
        assert (status["products"], status["labelled"]) == (8, 8)
        assert not (workspace / "catalog.sqlite").exists(), "the rows went to PostgreSQL"
        assert last_json(run("status", "--json", workspace=tmp_path / "elsewhere"))["products"] == 0
        wrong_folder = run("--database", url, "status", workspace=tmp_path / "elsewhere", check=False)
        assert wrong_folder.returncode == 2 and "another workspace folder" in wrong_folder.stderr
        gone = run("--database", "postgresql://ana:secret@127.0.0.1:9/x", "status", workspace=workspace, check=False)
        assert gone.returncode == 2 and gone.stderr.startswith("error: cannot reach the PostgreSQL catalogue")
        assert "secret" not in gone.stderr and "Traceback" not in gone.stderr
    finally:
        postgres_server.drop(url)
