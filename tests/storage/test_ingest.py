import csv
import io
import os
import zipfile

from PIL import Image

from conftest import demo_photos
from core.storage import ingest
from core.storage.catalog import Catalog


def test_folder_of_category_folders_labels_by_parent_folder(workspace, demo_dir):
    catalog = Catalog(workspace)
    report = ingest.import_paths(catalog, [demo_dir])
    assert len(report.added) == 80 and not report.rejected
    assert sorted(os.path.basename(s.name) for s in report.skipped) == ["LICENSE", "README.md"]
    labels = catalog.current_labels()
    assert len(labels) == 80
    assert sorted(set(labels.values())) == sorted(p.name for p in demo_dir.iterdir() if p.is_dir())
    for product in catalog.products():
        assert labels[product.id] in product.source


def test_reimport_is_all_duplicates_and_keeps_corrections(workspace, demo_dir):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir])
    product = catalog.product_ids()[0]
    catalog.set_labels([(product, "Corrected")], source="human")
    report = ingest.import_paths(catalog, [demo_dir])
    assert not report.added and len(report.duplicates) == 80
    assert catalog.count_products() == 80
    assert catalog.current_label(product) == "Corrected"


def test_single_files_are_unlabelled_unless_a_label_is_given(workspace):
    catalog = Catalog(workspace)
    lemons = demo_photos("Lemon")
    ingest.import_paths(catalog, lemons[:2])
    assert catalog.current_labels() == {}
    report = ingest.import_paths(catalog, lemons[2:4], label="Lemon")
    assert set(catalog.current_labels().values()) == {"Lemon"} and report.labelled == 2


def test_bad_files_are_reported_by_name_and_the_batch_goes_on(workspace, tmp_path):
    catalog = Catalog(workspace)
    folder = tmp_path / "upload" / "Lemon"
    folder.mkdir(parents=True)
    good = demo_photos("Lemon")[0]
    (folder / "good.jpg").write_bytes(good.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:3000])
    (folder / "notes.png").write_text("this is text")
    (folder / "notes.txt").write_text("skipped, not rejected")
    (folder / "random.jpg").write_bytes(os.urandom(4096))
    (folder / "also_good.png").write_bytes(_png(demo_photos("Lemon")[1]))
    report = ingest.import_paths(catalog, [tmp_path / "upload", tmp_path / "missing.jpg"])
    reasons = {os.path.basename(r.name): r.reason for r in report.rejected}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.png", "random.jpg", "missing.jpg"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert reasons["truncated.jpg"].startswith("truncated or corrupt image data")
    assert "not an image" in reasons["notes.png"]
    assert "no such file" in reasons["missing.jpg"]
    assert len(report.added) == 2
    assert [os.path.basename(s.name) for s in report.skipped] == ["notes.txt"]
    assert set(catalog.current_labels().values()) == {"Lemon"}


def test_bad_files_do_not_touch_what_is_stored(workspace, tmp_path):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, demo_photos("Lemon")[:3], label="Lemon")
    before = {p.id: catalog.image_path(p).read_bytes() for p in catalog.products()}
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    ingest.import_paths(catalog, [bad])
    after = {p.id: catalog.image_path(p).read_bytes() for p in catalog.products()}
    assert before == after and len(catalog.current_labels()) == 3


def _png(path):
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_archive_with_folders_and_hostile_members(workspace, tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("shoot/Lemon/a.jpg", demo_photos("Lemon")[0].read_bytes())
        zf.writestr("shoot/Banana/b.jpg", demo_photos("Banana")[0].read_bytes())
        zf.writestr("loose.jpg", demo_photos("Orange")[0].read_bytes())
        zf.writestr("shoot/readme.txt", "not a photo")
        zf.writestr("../../evil.jpg", demo_photos("Orange")[1].read_bytes())
        zf.writestr("__MACOSX/shoot/._a.jpg", b"resource fork")
    catalog = Catalog(workspace)
    report = ingest.import_paths(catalog, [archive])
    assert len(report.added) == 3
    rejected = {r.name.split(":", 1)[1]: r.reason for r in report.rejected}
    assert set(rejected) == {"../../evil.jpg"}
    assert [s.name.split(":", 1)[1] for s in report.skipped] == ["shoot/readme.txt"]
    assert "unsafe path" in rejected["../../evil.jpg"]
    assert not (tmp_path.parent / "evil.jpg").exists()
    labels = sorted(catalog.current_labels().values())
    assert labels == ["Banana", "Lemon"]  # loose.jpg at the archive root stays unlabelled


def test_zip_bomb_is_refused_without_unpacking(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("PRODUCTLENS_MAX_ZIP_MB", "5")
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.jpg", b"\x00" * (20 * 2**20))
    assert archive.stat().st_size < 100_000
    report = ingest.import_paths(Catalog(workspace), [archive])
    assert len(report.rejected) == 1 and "zip bomb" in report.rejected[0].reason


def test_corrupt_zip_is_reported(workspace, tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 this is not really a zip")
    report = ingest.import_paths(Catalog(workspace), [archive])
    assert len(report.rejected) == 1 and "zip" in report.rejected[0].reason


def test_csv_manifest(workspace, tmp_path):
    photos = demo_photos("Lemon")[:2] + demo_photos("Banana")[:1]
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerow([str(photos[0]), "Lemon"])
        writer.writerow([str(photos[1]), ""])
        writer.writerow([str(photos[2]), "Banana"])
        writer.writerow(["does/not/exist.jpg", "Lemon"])
    catalog = Catalog(workspace)
    report = ingest.import_paths(catalog, [manifest])
    assert len(report.added) == 3
    assert len(report.rejected) == 1 and "not found" in report.rejected[0].reason
    assert sorted(catalog.current_labels().values()) == ["Banana", "Lemon"]


def test_oversized_file_is_rejected(workspace, tmp_path, monkeypatch):
    monkeypatch.setenv("PRODUCTLENS_MAX_FILE_MB", "0")
    report = ingest.import_paths(Catalog(workspace), demo_photos("Lemon")[:1])
    assert "limit" in report.rejected[0].reason


def test_undecodable_file_names_are_stored(workspace, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-" + b"x" * 200 + b".jpg")
    (folder / name).write_bytes(demo_photos("Lemon")[0].read_bytes())
    catalog = Catalog(workspace)
    report = ingest.import_paths(catalog, [folder])
    assert len(report.added) == 1
    assert catalog.products()[0].filename.startswith("caf\ufffd-")


def test_upload_bytes_and_zip_bytes(workspace, tmp_path):
    catalog = Catalog(workspace)
    report = ingest.import_bytes(catalog, "lemon.jpg", demo_photos("Lemon")[0].read_bytes(), label="Lemon")
    assert len(report.added) == 1
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("Banana/b.jpg", demo_photos("Banana")[0].read_bytes())
    report = ingest.import_bytes(catalog, "batch.zip", buffer.getvalue())
    assert len(report.added) == 1 and report.names[report.added[0]] == "batch.zip:Banana/b.jpg"
    assert sorted(catalog.current_labels().values()) == ["Banana", "Lemon"]


def test_pipes_and_devices_are_refused_without_blocking(workspace, tmp_path):
    """A FIFO named .jpg would block a plain read forever; a link to /dev/zero never ends."""
    import threading

    folder = tmp_path / "inbox" / "Lemon"
    folder.mkdir(parents=True)
    (folder / "good.jpg").write_bytes(demo_photos("Lemon")[0].read_bytes())
    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    catalog = Catalog(workspace)
    reports = []
    worker = threading.Thread(target=lambda: reports.append(ingest.import_paths(
        catalog, [tmp_path / "inbox", folder / "pipe.jpg"])), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "import blocked on a special file"
    report = reports[0]
    reasons = {os.path.basename(r.name): r.reason for r in report.rejected}
    assert set(reasons) == {"pipe.jpg", "zero.jpg"} and len(report.rejected) == 3
    assert all(reason.startswith("not a regular file") for reason in reasons.values())
    assert len(report.added) == 1 and catalog.current_labels() == {report.added[0]: "Lemon"}


def test_one_bad_label_rejects_only_its_own_item(workspace, tmp_path):
    photos = [p for category in ("Lemon", "Banana") for p in demo_photos(category)][:15]
    manifest = tmp_path / "manifest.csv"
    rows = [[str(path), path.parent.name] for path in photos]
    rows[4][1] = "x" * 10_000
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label"], *rows])
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(f"{'L' * 210}/a.png", _png(demo_photos("Orange")[0]))
        bundle.writestr("Orange/b.png", _png(demo_photos("Orange")[1]))
    catalog = Catalog(workspace)
    report = ingest.import_paths(catalog, [manifest, archive])
    assert [(r.name.rsplit("/", 2)[-2:] if "zip" in r.name else r.name, r.reason.split(":")[0])
            for r in report.rejected] == [(str(photos[4]), "label not accepted (manifest.csv line 6)"),
                                          (["upload.zip:" + "L" * 210, "a.png"], "label not accepted")]
    assert "at most 200 characters" in report.rejected[0].reason
    labels = catalog.current_labels()
    assert len(labels) == 15 and report.labelled == 15, "the 14 good rows and the good zip member keep their labels"
    assert sorted(set(labels.values())) == ["Banana", "Lemon", "Orange"]


def test_colons_in_file_names_are_kept_and_folder_links_are_reported(workspace, tmp_path):
    photo = demo_photos("Lemon")[0].read_bytes()
    root = tmp_path / "drop"
    (root / "Lemon").mkdir(parents=True)
    (root / "Lemon" / "shelf 10:30.jpg").write_bytes(photo)
    (tmp_path / "elsewhere" / "Banana").mkdir(parents=True)
    (tmp_path / "elsewhere" / "Banana" / "b.jpg").write_bytes(demo_photos("Banana")[0].read_bytes())
    os.symlink(tmp_path / "elsewhere" / "Banana", root / "Banana")
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("Orange/09:15 aisle 3.jpg", demo_photos("Orange")[0].read_bytes())
    catalog = Catalog(workspace)
    report = ingest.import_paths(catalog, [root, archive])
    assert sorted(catalog.get_product(pid).filename for pid in report.added) == ["09:15 aisle 3.jpg",
                                                                                 "shelf 10:30.jpg"]
    linked = [item for item in report.skipped if item.name.endswith("Banana")]
    assert len(linked) == 1 and "link to a folder is not followed" in linked[0].reason


def test_nested_folders_and_zips_become_the_category_tree(workspace, tmp_path):
    for path in ["Fruit/Apple/Granny-Smith", "Fruit/Banana", "Vegetables/Leek"]:
        (tmp_path / "train" / path).mkdir(parents=True)
    photos = {"Fruit/Apple/Granny-Smith": demo_photos("Granny-Smith")[0], "Fruit/Banana": demo_photos("Banana")[0],
              "Vegetables/Leek": demo_photos("Lemon")[0]}
    for folder, photo in photos.items():
        (tmp_path / "train" / folder / photo.name).write_bytes(photo.read_bytes())
    catalog = Catalog(workspace)
    catalog.set_category_parents([("Banana", "Tropical")], author="ana")  # a person's choice stays
    report = ingest.import_paths(catalog, [tmp_path / "train"])
    assert sorted(catalog.current_labels().values()) == ["Banana", "Granny-Smith", "Leek"]
    assert catalog.category_parents() == {"Granny-Smith": "Apple", "Apple": "Fruit", "Banana": "Tropical",
                                          "Leek": "Vegetables"}
    assert report.parents_set == 3 and "3 category parents set" in report.summary()

    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("Dairy/Milk/Oat-Milk/a.jpg", demo_photos("Oatly-Oat-Milk")[0].read_bytes())
    ingest.import_paths(catalog, [archive])
    assert catalog.category_parents()["Oat-Milk"] == "Milk" and catalog.category_parents()["Milk"] == "Dairy"
    ingest.import_paths(catalog, [tmp_path / "train"], label="Produce")  # a given label: no tree from folders
    assert "Produce" not in catalog.category_parents().values()


def test_a_category_parent_csv_sets_the_tree_and_reports_bad_lines(workspace, tmp_path):
    manifest = tmp_path / "tree.csv"
    manifest.write_text("category,parent\nGranny-Smith,Apple\nApple,Fruit\nFruit,Granny-Smith\n"
                        "Leek,Vegetables\nbad\x07name,Vegetables\nBanana,\n")
    catalog = Catalog(workspace)
    catalog.set_category_parents([("Banana", "Fruit"), ("Apple", "Pome")])
    report = ingest.import_paths(catalog, [manifest])
    # A person's CSV is deliberate: it overrides; a loop or a bad name skips only its own line.
    assert catalog.category_parents() == {"Granny-Smith": "Apple", "Apple": "Fruit", "Leek": "Vegetables"}
    assert sorted(item.name for item in report.rejected) == ["tree.csv line 4", "tree.csv line 6"]
    assert "lies under it" in report.rejected[0].reason and not report.added and not report.skipped
