"""``python -m core``: the batch side of ProductLens, without a browser.

Each sub-command is a thin wrapper over a ``core`` function. Errors a user can
fix (:class:`~core.errors.ProductLensError`: a missing path, an empty
catalogue, a backbone that cannot load) end with a one-line ``error: …`` on
stderr and exit code 2; anything else is a bug and shows its traceback.
Progress bars go to stderr so stdout stays machine-readable (``--json`` output,
one JSON object on the last line).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import settings  # noqa: E402
from core.errors import InvalidInputError, ProductLensError  # noqa: E402
from core.storage.catalog import storage_error_message  # noqa: E402


def _progress_bar(description: str, enabled: bool = True):
    """A callback ``(done, total, message)`` drawing a tqdm bar on stderr."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, desc=description, unit="img", file=sys.stderr, dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get("PRODUCTLENS_PROGRESS") != "1")

    def update(done, total, _message=""):
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _catalog(args, create=True):
    from core.storage import Catalog

    return Catalog(args.workspace, create=create, database=args.database)


def _embedder(args):
    from core.features import Embedder

    return Embedder(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                    pooling=args.pooling, views=args.views)


def command_import(args) -> int:
    from core.storage import import_paths

    catalog = _catalog(args)
    update, close = _progress_bar("import", not args.quiet)
    if args.engine == "ray":
        from core.storage.ray_ingest import import_paths_on_ray

        report = import_paths_on_ray(catalog, args.paths, label=args.label, address=args.address,
                                     workers=args.workers, progress=update)
    else:
        report = import_paths(catalog, args.paths, label=args.label, progress=update)
    close()
    for rejected in report.rejected:
        print(f"rejected: {rejected.name}: {rejected.reason}")
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.summary())
    if not report.product_ids and not report.parents_set and report.rejected:
        only_tree = report.parents_rejected == len(report.rejected)
        raise ProductLensError("no category parent could be set" if only_tree else "no photo could be imported")
    return 0


def command_embed(args) -> int:
    from core.features import embed_catalog

    catalog = _catalog(args, create=False)
    if catalog.count_products() == 0:
        raise ProductLensError("the catalogue is empty: run `python -m core import PATH` first")
    embedder = _embedder(args)
    if args.engine == "ray":
        from core.features.ray_embedding import embed_catalog_on_ray

        report = embed_catalog_on_ray(catalog, embedder, address=args.address, workers=args.workers)
    else:
        update, close = _progress_bar("embed", not args.quiet)
        report = embed_catalog(catalog, embedder, progress=update)
        close()
    for product_id, reason in report.failed:
        print(f"failed: product {product_id}: {reason}")
    # On Ray each worker picks its runtime the same way, on its own machine.
    result = {"embedding": report.key, "runtime": embedder.runtime, "computed": report.computed,
              "cached": report.cached,
              "failed": len(report.failed), "seconds": round(report.seconds, 2),
              "images_per_second": round(report.images_per_second, 2)}
    print(json.dumps(result))
    return 0


def _head(args):
    from core.model import HeadClassifier

    if args.epochs is not None and not args.hidden_units:
        # The default linear head is solved in closed form: there are no epochs to set.
        raise InvalidInputError("--epochs applies to a head with a hidden layer: add --hidden-units N")
    if args.epochs is None:
        return HeadClassifier(hidden_units=args.hidden_units)
    return HeadClassifier(hidden_units=args.hidden_units, max_epochs=args.epochs)


def command_train(args) -> int:
    from core.features import embed_catalog
    from core.model import predict_catalog, train_version

    catalog = _catalog(args, create=False)
    embedder = _embedder(args)
    if catalog.count_embeddings(embedder.key) < catalog.count_products():
        update, close = _progress_bar("embed", not args.quiet)
        embed_catalog(catalog, embedder, progress=update)
        close()
    update, close = _progress_bar("train", not args.quiet)
    if args.fine_tune:
        from core.model import FineTuner, fine_tune_version

        tuner = FineTuner(**({"epochs": args.fine_tune_epochs} if args.fine_tune_epochs else {}))
        version = fine_tune_version(catalog, embedder, tuner, progress=update)
    else:
        version = train_version(catalog, embedder, _head(args), progress=update, augmented_views=args.views)
    close()
    predicted = predict_catalog(catalog, version)
    metrics = version.metrics
    if metrics.get("n_skipped_without_features"):
        print(f"skipped: {metrics['n_skipped_without_features']} labelled products without features "
              "(photo missing or unreadable; see `python -m core embed`)", file=sys.stderr)
    print(json.dumps({"model_version": version.id, "classes": len(version.classes),
                      "n_train": metrics["n_train"], "n_skipped": metrics.get("n_skipped_without_features", 0),
                      "validation_accuracy": metrics["accuracy"],
                      "train_seconds": metrics["train_seconds"], "predicted": predicted["predicted"],
                      **({"fine_tune_seconds": metrics["fine_tune_seconds"]} if metrics.get("fine_tuned") else {})}))
    return 0


def command_predict(args) -> int:
    from core.model import load_version, predict_catalog
    from core.model.training import embedder_for

    catalog = _catalog(args, create=False)
    version, _ = load_version(catalog, args.version)
    # Products added since the version was trained are embedded with its own backbone first.
    embedder = embedder_for(version, catalog)
    if args.engine == "ray":
        from core.features.ray_embedding import embed_catalog_on_ray

        report = embed_catalog_on_ray(catalog, embedder, address=args.address, workers=args.workers)
    else:
        from core.features import embed_catalog

        update, close = _progress_bar("embed", not args.quiet)
        report = embed_catalog(catalog, embedder, progress=update)
        close()
    for product_id, reason in report.failed:
        print(f"failed: product {product_id}: {reason}")
    result = predict_catalog(catalog, version, top_k=args.top_k)
    print(json.dumps({**result, "embedded": report.computed}))
    return 0


def command_export(args) -> int:
    from core.jobs import export_embeddings, export_labels
    from core.jobs.export import export_classifier_formats
    from core.model import load_version

    catalog = _catalog(args, create=False)
    target = Path(args.output or catalog.workspace / "exports")
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"--output {target} is a file: give a folder to write the exports into")
    written, not_written = [], {}
    if args.what in ("labels", "all"):
        for suffix in ([args.format] if args.format else ["csv", "parquet"]):
            written.append(export_labels(catalog, target / f"labels.{suffix}"))
    if args.what in ("embeddings", "all"):
        version = catalog.active_model_version()
        key = args.embedding or (version.embedding_key if version else _embedder(args).key)
        written.append(export_embeddings(catalog, target / f"embeddings.{args.embeddings_format}", key))
    if args.what in ("model", "all"):
        load_version(catalog)  # fails early with a clear message when nothing is trained
        for name, outcome in export_classifier_formats(catalog, target).items():
            if isinstance(outcome, Path):
                written.append(outcome)
            else:
                not_written[name] = outcome
    print(json.dumps({"written": [str(path) for path in written], "not_written": not_written}))
    return 0


def command_status(args) -> int:
    from core.storage.catalog import DATABASE_NAME

    # An existing catalogue is only read (status must work on a read-only or full disk).
    from core.storage.database import SQLITE, database_url

    on_sqlite = database_url(args.database) == SQLITE
    new_file = not (settings.workspace_dir(args.workspace) / DATABASE_NAME).exists()
    catalog = _catalog(args, create=not on_sqlite or new_file)
    status = catalog.status()
    if args.json:
        print(json.dumps(status))
    else:
        print(f"workspace:   {status['workspace']}")
        print(f"products:    {status['products']} ({status['labelled']} labelled, {status['unlabelled']} unlabelled)")
        print(f"categories:  {status['categories']}")
        model = status["active_model"]
        if model:
            accuracy = "n/a" if model["accuracy"] is None else f"{model['accuracy']:.1%}"
            print(f"model:       version {model['version']} ({model['classes']} categories, "
                  f"validation accuracy {accuracy})")
        else:
            print("model:       none yet (run `python -m core train`)")
    return 0


def command_versions(args) -> int:
    from core.model import activate

    catalog = _catalog(args, create=False)
    if args.activate is not None:
        activate(catalog, args.activate)
    rows = [{"version": v.id, "active": v.is_active, "created_at": v.created_at,
             "classes": len(v.classes), "accuracy": v.metrics.get("accuracy"), "embedding": v.embedding_key}
            for v in catalog.model_versions()]
    print(json.dumps(rows))
    return 0


def command_history(args) -> int:
    from core.storage import history_rows

    rows = history_rows(_catalog(args, create=False), args.product, args.limit)
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            # Names come from users and files: shown escaped, one event per line, whatever they contain.
            print(f"{row['when'][:19].replace('T', ' ')}  {_text(row['who'] or '-'):<12} {row['source']:<15} "
                  f"#{row['product_id']} {_text(row['filename'])}: {_text(row['from'] or '(none)')} -> "
                  f"{_text(row['to'] or '(none)')}")
    return 0


def command_categories(args) -> int:
    from core.curation import category_rows

    catalog = _catalog(args, create=False)
    if args.category is not None or args.parent is not None:
        if args.category is None or args.parent is None:
            raise InvalidInputError("give a CATEGORY and its --parent ('' makes it a top-level category)")
        account = _acting_account(catalog, args, "rename")
        catalog.set_category_parents([(args.category, args.parent or None)], author=account.name)
    rows = category_rows(catalog)
    if args.json:
        print(json.dumps(rows))
    else:
        if not rows:
            print("no categories yet: import labelled photos, or a category,parent CSV")
        for row in rows:
            print(f"{'  ' * row['level']}{_text(row['category'])}  ({row['products']} products"
                  + (f", {row['products_below']} with the categories under it" if row["products_below"]
                     != row["products"] else "") + ")")
    return 0


def _text(value) -> str:
    """User text for a terminal line: control characters (newlines, escape sequences) escaped."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _embedding_key(catalog, args) -> str:
    version = catalog.active_model_version()
    return version.embedding_key if version else _embedder(args).key


def command_similar(args) -> int:
    from core.curation import catalog_index

    catalog = _catalog(args, create=False)
    key = _embedding_key(catalog, args)
    index = catalog_index(catalog, key)
    if args.query.isdigit():
        ids, vectors = catalog.embeddings(key, [int(args.query)])
        if len(ids) == 0:
            raise ProductLensError(f"product {args.query} has no embedding: run `embed` first")
        query = vectors[0]
    else:
        if not Path(args.query).is_file():
            raise ProductLensError(f"{args.query} is neither a product id nor a file")
        version = catalog.active_model_version()
        from core.model import embedder_for

        # The photo's features as the searched vectors were made: the active model's own embedder when the
        # search runs on its features (fine-tuned, or trained before a default changed).
        embedder = embedder_for(version, catalog) if version is not None and version.embedding_key == key \
            else _embedder(args)
        vectors, failures = embedder.embed_sources([Path(args.query)])
        if failures:
            raise ProductLensError(f"{args.query}: {failures[0][1]}")
        query = vectors[0]
    ids, scores = index.query(query, k=args.k)
    names = {p.id: p.filename for p in catalog.products(ids[0].tolist())}
    labels = catalog.current_labels()
    rows = [{"product_id": int(pid), "filename": names[int(pid)], "label": labels.get(int(pid)),
             "similarity": round(float(score), 4)} for pid, score in zip(ids[0], scores[0])]
    if not args.json:
        for row in rows:
            print(f"{row['similarity']:.3f}  #{row['product_id']} {row['filename']} ({row['label'] or 'unlabelled'})")
    print(json.dumps(rows))
    return 0


def command_duplicates(args) -> int:
    from core.curation import duplicates

    catalog = _catalog(args, create=False)
    groups = duplicates.duplicate_groups(catalog, _embedding_key(catalog, args), threshold=args.threshold)
    rows = [{"min_similarity": round(group["min_similarity"], 4), "majority_label": group["majority_label"],
             "products": [{"product_id": pid, "filename": name, "label": label} for pid, name, label
                          in zip(group["product_ids"], group["filenames"], group["labels"])]}
            for group in groups]
    if not args.json:
        for number, group in enumerate(rows, start=1):
            print(f"group {number} (similarity >= {group['min_similarity']:.3f}): "
                  + ", ".join(f"#{p['product_id']} {p['filename']}" for p in group["products"]))
    print(json.dumps(rows))
    return 0


def command_suspicious(args) -> int:
    from core.curation import suspicious

    catalog = _catalog(args, create=False)
    issues, statistics = suspicious.suspicious_labels(catalog, _embedding_key(catalog, args), folds=args.folds)
    rows = [{"product_id": int(row.product_id), "filename": row.filename, "label": row.label,
             "label_source": row.label_source, "suggested_label": row.suggested_label,
             "score": round(float(row.label_quality), 4)} for row in issues.itertuples()]
    if not args.json:
        print(f"{statistics['flagged']} of {statistics['labelled']} labels look wrong "
              f"({statistics['folds']}-fold out-of-sample predictions, {statistics['seconds']:.1f} s); "
              "score = predicted probability of the current label, lowest first")
        for row in rows:
            print(f"{row['score']:.3f}  #{row['product_id']} {row['filename']}: {row['label']} -> "
                  f"{row['suggested_label']}?")
    print(json.dumps(rows))
    return 0


def command_coldstart(args) -> int:
    from core.features import embed_catalog
    from core.model import cold_start, predict_catalog

    catalog = _catalog(args, create=False)
    embedder = _embedder(args)
    update, close = _progress_bar("embed", not args.quiet)
    embed_catalog(catalog, embedder, progress=update)
    close()
    version, rejected = cold_start(catalog, embedder, args.references)
    for item in rejected:
        print(f"rejected: {item.name}: {item.reason}")
    predicted = predict_catalog(catalog, version)
    print(json.dumps({"model_version": version.id, "categories": len(version.classes),
                      "predicted": predicted["predicted"]}))
    return 0


def command_backup(args) -> int:
    from core.storage import backup

    path = backup(_catalog(args, create=False), args.archive)
    print(json.dumps({"archive": str(path), "bytes": path.stat().st_size}))
    return 0


def command_restore(args) -> int:
    from core.storage import restore

    catalog = restore(args.archive, settings.workspace_dir(args.workspace), database=args.database)
    print(json.dumps(catalog.status()))
    return 0


def _password(args, prompt: str = "Password: ", confirm: bool = False) -> str:
    """From stdin (``--password-stdin``, first line), $PRODUCTLENS_PASSWORD, or a prompt that does not echo."""
    if getattr(args, "password_stdin", False):
        return sys.stdin.readline().rstrip("\r\n")
    if os.environ.get("PRODUCTLENS_PASSWORD"):
        return os.environ["PRODUCTLENS_PASSWORD"]
    if not sys.stdin.isatty():
        raise InvalidInputError("no password: use --password-stdin or set PRODUCTLENS_PASSWORD")
    import getpass

    password = getpass.getpass(prompt)
    if confirm and getpass.getpass("Repeat it: ") != password:
        raise InvalidInputError("the two passwords differ")
    return password


def _acting_account(catalog, args, action: str):
    """Who acts: the signed-in account where the workspace has accounts, else the local user named --user."""
    from core.security import LOCAL, Account, authenticate, require

    if not catalog.has_accounts():
        return LOCAL if not args.user else Account(args.user.strip(), "admin", signed_in=False)
    if not args.user:
        raise InvalidInputError("this workspace has accounts: add --user NAME (password from --password-stdin, "
                                "$PRODUCTLENS_PASSWORD or a prompt)")
    account = authenticate(catalog, args.user, _password(args))
    require(account, action)
    return account


def command_users(args) -> int:
    from core.security import add_user, change_password, change_role, remove_user

    catalog = _catalog(args, create=args.users_command == "add")
    if args.users_command == "add":
        add_user(catalog, args.name, _password(args, confirm=True), args.role)
        print(f"added {_text(args.name)} ({args.role})")
    elif args.users_command == "passwd":
        change_password(catalog, args.name, _password(args, "New password: ", confirm=True))
        print(f"password of {_text(args.name)} changed")
    elif args.users_command == "role":
        change_role(catalog, args.name, args.role)
        print(f"{_text(args.name)} is now {args.role}")
    elif args.users_command == "remove":
        remove_user(catalog, args.name)
        print(f"removed {_text(args.name)}")
    else:
        users = catalog.users()
        if args.json:
            print(json.dumps(users))
        elif not users:
            print("no accounts: the app trusts whoever reaches it (add one with `python -m core users add NAME "
                  "--role admin`)")
        for user in ([] if args.json else users):
            print(f"{_text(user['name']):<24} {user['role']:<9} since {user['created_at'][:10]}")
    return 0


def _report_conflicts(conflicts) -> int:
    for conflict in conflicts:
        print(f"conflict: {_text(conflict.message())}", file=sys.stderr)
    return 3 if conflicts else 0


def command_label(args) -> int:
    from core.storage.catalog import ANY

    catalog = _catalog(args, create=False)
    account = _acting_account(catalog, args, "label")
    catalog.get_product(args.product)  # a one-line error for an unknown id
    seen = ANY if args.expect is None else (args.expect or None)
    changed, conflicts = catalog.change_labels([(args.product, args.category or None, seen)], source="human",
                                               author=account.name)
    print(json.dumps({"product_id": args.product, "changed": changed, "label": catalog.current_label(args.product),
                      "conflicts": len(conflicts)}))
    return _report_conflicts(conflicts)


def command_undo(args) -> int:
    from core.curation import review

    catalog = _catalog(args, create=False)
    account = _acting_account(catalog, args, "undo")
    changed, conflicts = review.undo_last_action(catalog, account.name)
    print(json.dumps({"undone": changed, "conflicts": len(conflicts)}))
    return _report_conflicts(conflicts)


def command_evaluate(args) -> int:
    from core.jobs import evaluate

    bars = {}

    def progress(stage, done, total):
        if args.quiet:
            return
        if stage not in bars:
            for _update, close in bars.values():
                close()
            bars.clear()
            bars[stage] = _progress_bar(stage)
        bars[stage][0](done, total)

    result = evaluate(args.train, args.test, embedder=_embedder(args), head=_head(args),
                      predictions_csv=args.predictions_csv, progress=progress, augmented_views=args.views)
    for _update, close in bars.values():
        close()
    print(json.dumps(result))
    return 0


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    from core.curation import duplicates
    from core.features import BACKBONES, POOLINGS

    parser = argparse.ArgumentParser(prog="python -m core", description="ProductLens: sort product photos "
                                     "into categories with a pretrained CNN and a trainable head.")
    parser.add_argument("--workspace", help="workspace folder (default: $PRODUCTLENS_WORKSPACE or ./workspace)")
    parser.add_argument("--database", help="where the catalogue's rows live: 'sqlite' (the workspace's catalog.sqlite) "
                        "or a PostgreSQL URL postgresql://user@host:5432/name (default: $PRODUCTLENS_DATABASE, "
                        "else sqlite); photos and models stay in the workspace folder")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_backbone_options(sub):
        sub.add_argument("--backbone", default=None, choices=sorted(BACKBONES),
                         help=f"feature extractor (default: $PRODUCTLENS_BACKBONE or {settings.DEFAULT_BACKBONE}, "
                              "works offline)")
        sub.add_argument("--weights", default="imagenet",
                         help="'imagenet' (default) or a local Keras weights file for the backbone")
        sub.add_argument("--image-size", type=int, default=None, help="input resolution (default: backbone's)")
        sub.add_argument("--pooling", choices=POOLINGS, default=None,
                         help="feature pooling (default: multi for EfficientNet-Lite, see core/features/pooling.py)")
        sub.add_argument("--views", type=int, default=None,
                         help=f"random crops embedded per photo: training rows for labelled photos, averaged into "
                              f"every prediction (default: $PRODUCTLENS_VIEWS or {settings.DEFAULT_VIEWS}; "
                              "0 = fastest, less accurate)")

    def add_engine_options(sub, engine_help="where photos are embedded. local: this process (default); ray: a pool "
                                            "of Ray workers"):
        sub.add_argument("--engine", choices=("local", "ray"), default="local",
                         help=f"{engine_help} (pip install -r requirements-scale.txt)")
        sub.add_argument("--address", default=None,
                         help="with --engine ray: an existing Ray cluster (default: start Ray on this machine)")
        sub.add_argument("--workers", type=_at_least(1), default=2,
                         help="with --engine ray: workers, one CPU each (default 2)")

    def add_model_options(sub, head=False):
        add_backbone_options(sub)
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        if head:
            sub.add_argument("--hidden-units", type=int, default=0,
                             help="hidden layer width; 0 = linear head, solved in closed form (default)")
            sub.add_argument("--epochs", type=int, default=None,
                             help="with --hidden-units: maximum AdamW training epochs (default 200)")

    sub = commands.add_parser("import", help="add photos: files, folders of category folders, zips, CSV manifests, "
                                             "bucket prefixes")
    sub.add_argument("paths", nargs="+", help="image files, folders, .zip archives, path,label CSV files, or "
                                              "locations pyarrow reads (s3://bucket/prefix, gs://…, file:///…)")
    sub.add_argument("--label", help="give every imported photo this category")
    sub.add_argument("--json", action="store_true", help="print the summary as JSON")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_options(sub, "where photos are read, checked and stored. local: this process (default); ray: "
                            "a pool of Ray workers writing to the workspace's images/ (a shared folder on a cluster)")
    sub.set_defaults(handler=command_import)

    sub = commands.add_parser("embed", help="compute backbone features for products that lack them")
    add_model_options(sub)
    add_engine_options(sub)
    sub.set_defaults(handler=command_embed)

    sub = commands.add_parser("train", help="train a new head version on the current labels, then predict")
    add_model_options(sub, head=True)
    sub.add_argument("--fine-tune", action="store_true",
                     help="also fine-tune the top of the backbone (its last convolution) on the labels; slower")
    sub.add_argument("--fine-tune-epochs", type=_at_least(1), default=None,
                     help="with --fine-tune: epochs over the labelled photos (default 6)")
    sub.set_defaults(handler=command_train)

    sub = commands.add_parser("predict", help="predict every product with a model version (embedding those "
                                              "added since it was trained)")
    sub.add_argument("--version", type=int, default=None, help="model version (default: active)")
    sub.add_argument("--top-k", type=_at_least(1), default=5, help="categories kept per product (default 5)")
    sub.add_argument("--quiet", action="store_true", help="no progress bar")
    add_engine_options(sub)
    sub.set_defaults(handler=command_predict)

    sub = commands.add_parser("export", help="write labels, embeddings or the classifier (.keras, SavedModel; "
                                             "TFLite and ONNX where they convert) to files")
    sub.add_argument("what", nargs="?", default="all", choices=["labels", "embeddings", "model", "all"])
    sub.add_argument("--output", help="folder to write to (default: WORKSPACE/exports)")
    sub.add_argument("--format", choices=["csv", "parquet"], help="labels format (default: both)")
    sub.add_argument("--embeddings-format", choices=["parquet", "npy"], default="parquet")
    sub.add_argument("--embedding", help="embedding key (default: the active model's)")
    add_backbone_options(sub)
    sub.set_defaults(handler=command_export)

    sub = commands.add_parser("status", help="catalogue summary")
    sub.add_argument("--json", action="store_true", help="one JSON object")
    sub.set_defaults(handler=command_status)

    sub = commands.add_parser("versions", help="list model versions; --activate N rolls back or forward")
    sub.add_argument("--activate", type=int, default=None, metavar="N")
    sub.set_defaults(handler=command_versions)

    sub = commands.add_parser("history", help="who changed which label, when, from what to what")
    sub.add_argument("--product", type=int, help="only this product id")
    sub.add_argument("--limit", type=_at_least(1), default=100, help="most recent N events (default 100)")
    sub.add_argument("--json", action="store_true", help="one JSON list")
    sub.set_defaults(handler=command_history)

    sub = commands.add_parser("similar", help="the most similar products to a product id or a photo file")
    sub.add_argument("query", metavar="PATH_OR_PRODUCT", help="a product id or an image file")
    sub.add_argument("--k", type=_at_least(1), default=10, help="how many neighbours (default 10)")
    sub.add_argument("--json", action="store_true", help="only the JSON list")
    add_backbone_options(sub)
    sub.set_defaults(handler=command_similar)

    sub = commands.add_parser("duplicates",
                              help="groups of near-identical products (cosine similarity of features)")
    sub.add_argument("--threshold", type=float, default=duplicates.DEFAULT_THRESHOLD,
                     help=f"similarity that counts as a duplicate (0-1, default {duplicates.DEFAULT_THRESHOLD})")
    sub.add_argument("--json", action="store_true", help="only the JSON list")
    add_backbone_options(sub)
    sub.set_defaults(handler=command_duplicates)

    sub = commands.add_parser("suspicious", help="labels that are probably wrong (judged by cross-validated "
                              "heads, near-identical shots held out together), with a suggested label")
    sub.add_argument("--folds", type=_at_least(2), default=5, help="cross-validation folds (default 5)")
    sub.add_argument("--json", action="store_true", help="only the JSON list")
    add_backbone_options(sub)
    sub.set_defaults(handler=command_suspicious)

    sub = commands.add_parser("coldstart", help="predict before any labels, from reference photos per category")
    sub.add_argument("--references", required=True, help="folder of category folders with 1+ reference photos each")
    add_model_options(sub)
    sub.set_defaults(handler=command_coldstart)

    sub = commands.add_parser("backup", help="write the whole workspace (catalogue, photos, models) to one zip")
    sub.add_argument("archive", help="archive file to write, e.g. productlens-backup.zip")
    sub.set_defaults(handler=command_backup)

    sub = commands.add_parser("restore", help="unpack a backup into a new, empty workspace "
                                  "(--workspace); with --database, its rows go into that empty PostgreSQL database")
    sub.add_argument("archive", help="archive written by `backup`")
    sub.set_defaults(handler=command_restore)

    def add_identity_options(sub):
        sub.add_argument("--user", help="act as this account (required once the workspace has accounts; "
                                        "without accounts, the name recorded in the history)")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of stdin (else $PRODUCTLENS_PASSWORD or a prompt)")

    sub = commands.add_parser("label", help="set one product's category (a person's correction)")
    sub.add_argument("product", type=int, metavar="PRODUCT", help="product id")
    sub.add_argument("category", metavar="CATEGORY", help="the category; an empty string clears the label")
    sub.add_argument("--expect", metavar="OLD", help="apply only if the label is still OLD ('' = unlabelled); "
                     "otherwise report who changed it and exit with code 3")
    add_identity_options(sub)
    sub.set_defaults(handler=command_label)

    sub = commands.add_parser("categories", help="list categories as a tree; CATEGORY --parent P sets a parent "
                              "(admin; also from folder trees and a category,parent CSV on import)")
    sub.add_argument("category", nargs="?", metavar="CATEGORY", help="the category to move")
    sub.add_argument("--parent", metavar="PARENT", help="its new parent ('' makes it a top-level category)")
    sub.add_argument("--json", action="store_true", help="print one JSON list")
    add_identity_options(sub)
    sub.set_defaults(handler=command_categories)

    sub = commands.add_parser("undo", help="revert your most recent labelling action (never a later change "
                              "by someone else: those are reported, exit code 3)")
    add_identity_options(sub)
    sub.set_defaults(handler=command_undo)

    sub = commands.add_parser("users", help="accounts for the app: add, list, remove, passwd, role")
    users = sub.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    action = users.add_parser("add", help="add an account (the first one must be an admin)")
    action.add_argument("name")
    action.add_argument("--role", required=True, choices=["viewer", "labeller", "admin"])
    action.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    action = users.add_parser("list", help="accounts and their roles")
    action.add_argument("--json", action="store_true")
    action = users.add_parser("remove", help="remove an account (its history entries stay)")
    action.add_argument("name")
    action = users.add_parser("passwd", help="set a new password")
    action.add_argument("name")
    action.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    action = users.add_parser("role", help="change an account's role")
    action.add_argument("name")
    action.add_argument("role", choices=["viewer", "labeller", "admin"])
    sub.set_defaults(handler=command_users)

    sub = commands.add_parser("evaluate", help="import, embed, train on --train and measure on --test "
                              "in a throw-away workspace")
    sub.add_argument("--train", required=True, help="folder of category folders to train on")
    sub.add_argument("--test", required=True, help="folder of category folders to measure on")
    sub.add_argument("--predictions-csv", help="write path,true_label,predicted_label,confidence here")
    add_model_options(sub, head=True)
    sub.set_defaults(handler=command_evaluate)
    return parser


def _database_path(args) -> Path:
    from core.storage.catalog import DATABASE_NAME

    return settings.workspace_dir(args.workspace) / DATABASE_NAME


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        return args.handler(args)
    except ProductLensError as error:
        # Only errors a user can fix end in one line; anything else is a bug and keeps its traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as error:  # a damaged or unwritable catalogue file read directly
        print(f"error: {storage_error_message(error, _database_path(args))}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
            raise
        print(f"error: {storage_error_message(error, _database_path(args))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: work done so far is saved", file=sys.stderr)
        return 130
