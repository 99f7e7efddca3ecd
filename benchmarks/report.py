"""Build every benchmark table of the README (and the label-efficiency figure) from the JSON results.

Each benchmark script writes ``benchmarks/results/<name>.json``; this script
turns them into Markdown between ``<!-- name -->`` … ``<!-- /name -->`` markers in
README.md, so no number in those tables is ever copied by hand. A result that
has not been measured yet says so, with the command that measures it.

    python benchmarks/report.py --update-readme      # rewrite README.md
    python benchmarks/report.py                      # print the tables
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIGURE = REPO / "benchmarks" / "figures" / "label_efficiency.html"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def with_interval(measured: dict) -> str:
    """``88.2% (84.0–91.4)``: an accuracy and its 95% Wilson interval."""
    return f"{measured['value']:.1%} ({measured['low']:.1%}–{measured['high']:.1%})"


def measured_on(result: dict) -> str:
    machine = result["machine"]
    if isinstance(machine, str):  # results written before the machine was recorded as a dict
        where = f"{machine}, TensorFlow {result.get('tensorflow', '?')}"
    else:
        where = f"{machine['cpu']}, {machine['cores']} cores, TensorFlow {machine['tensorflow']}"
    return f"_Measured {result['measured_at']} on commit `{result['commit']}`, {where}._"


def missing(script: str) -> str:
    return f"_Not measured yet with this version: run `python benchmarks/{script}`._"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# -- one function per README section -------------------------------------------------------

def grocery() -> str:
    result = load("grocery")
    if result is None:
        return missing("grocery.py")
    top = [with_interval(result["top_level"])] if "top_level" in result else []
    return "\n".join([table(
        ["settings", "fine accuracy (95% interval)", "coarse accuracy (95% interval)"]
        + (["Fruit / Vegetables / Packages"] if top else [])
        + ["train / val photos", "classes", "embed photos/s", "embed s", "head training s", "peak memory"],
        [[result["settings"], with_interval(result["fine"]), with_interval(result["coarse"]), *top,
          f"{result['n_train']} / {result['n_test']}", result["n_classes"], f"{result['images_per_second']:.1f}",
          f"{result['embed_seconds']:.0f}", f"{result['train_seconds']:.1f}", f"{result['peak_memory_mb']:.0f} MB"]]),
        "", *_coverage_lines(result.get("coverage")), *_calibration_lines(result.get("calibration")),
        measured_on(result)])


def _coverage_lines(coverage: list | None) -> list[str]:
    """The "Fruit › ?" fallback on val: how many photos keep a fine answer at each threshold, and how right."""
    if not coverage:
        return []
    rows = [[f"{row['threshold']:.0%}", percent(row["fine_coverage"]),
             with_interval(row["fine"]) if row["fine"]["n"] else "–",
             f"{row['answered'] - row['fine_answered']}", f"{row['n'] - row['answered']}",
             with_interval(row["answers"]) if row["answers"]["n"] else "–"] for row in coverage]
    return ["Coarse and fine levels come from the model itself: a coarse category's probability is the sum of "
            "its fine categories'. Below a confidence threshold the app answers with the coarse category it is "
            "sure of (\"Fruit › Apple › ?\") instead of a fine guess; on val:", "",
            table(["threshold", "photos with a fine answer", "fine answers right",
                   "coarse answers (\"Fruit › ?\")", "no answer (\"?\")", "every answer right at its level"],
                  rows), ""]


def _calibration_lines(calibration: dict | None) -> list[str]:
    """The val photos' reliability diagram as a table: what the confidence promised, what came true."""
    if not calibration:
        return []
    rows = [[f"{b['low']:.0%}–{b['high']:.0%}", b["n"], percent(b["confidence"]), percent(b["accuracy"])]
            for b in calibration["bins"]]
    return [f"Calibration on val: expected calibration error **{calibration['ece']:.3f}** "
            f"(95% bootstrap interval {calibration['low']:.3f}–{calibration['high']:.3f}; 15 bins; mean confidence "
            f"{percent(calibration['mean_confidence'])}).", "",
            table(["confidence bin", "val photos", "mean confidence", "right"], rows), ""]


def ablation() -> str:
    result = load("ablation")
    if result is None:
        return missing("ablation.py")
    rows = []
    for row in result["rows"]:
        lever = f"**{row['lever']}**" if row["default"] else row["lever"]
        rows.append([lever, with_interval(row["fine"]), with_interval(row["coarse"]), f"{row['train_seconds']:.2f}"])
    return "\n".join([table(["lever", "fine (95% interval)", "coarse (95% interval)", "head fit s"], rows), "",
                      f"{result['train']} train photos, {result['val']} val photos. " + measured_on(result)])


def label_efficiency() -> str:
    result = load("label_efficiency")
    if result is None:
        return missing("label_efficiency.py")
    curves = result["curves"]
    counts = [count for count, _ in next(iter(curves.values()))]
    shown = [i for i, count in enumerate(counts) if i in (0, 1, 3, 5, 7, 9, 11, 15, 19) or i == len(counts) - 1]
    rows = [[f"**{name}**" if name.endswith("(default)") else name] + [percent(curve[i][1]) for i in shown]
            for name, curve in curves.items()]
    reach = result["labels_to_reach"]
    n = result["val_photos"]
    from _results import accuracy

    def interval(value: float) -> str:
        return with_interval(accuracy(int(round(value * n)), n))

    by_seed = result.get("labels_to_reach_by_seed", {})

    def seeds_of(name: str) -> str:
        return ", ".join(str(c) if c is not None else f">{counts[-1]}" for c in by_seed.get(name, [])) or "n/a"

    needed = table(["strategy", "labels to reach random's accuracy at 1,000 (median curve)", "each seed's run",
                    "accuracy there (95% interval)", f"accuracy at {counts[-1]} labels (95% interval)"],
                   [[f"**{name}**" if name.endswith("(default)") else name,
                     reach[name] if reach[name] is not None else f"more than {counts[-1]}", seeds_of(name),
                     interval(dict(curve)[reach[name]]) if reach[name] is not None else "n/a", interval(curve[-1][1])]
                    for name, curve in curves.items()])
    sentences = [f"Random labelling reaches {percent(result['target_accuracy'])} with {counts[-1]} labels "
                 f"({n} val photos: one photo is {1 / n:.2%}); each point is one retrain, so an interval is wide "
                 "and neighbouring points overlap. Each curve is the median of "
                 f"{result.get('seeds', 3)} seeded runs; labels are added {result['batch']} at a time, so a "
                 "count is only as fine as that batch."]
    if "propagation_threshold" in result:
        sentences.append(f"Near-duplicate propagation: unlabelled products at cosine ≥ "
                         f"{result['propagation_threshold']} to a labelled one (and no labelled product of another "
                         "category within 0.05 of that) train with its label, as in the app.")
    _write_figure(result)
    return "\n".join([table(["labels"] + [str(counts[i]) for i in shown], rows), "", needed, "",
                      " ".join(sentences), "", measured_on(result)])


def _write_figure(result: dict) -> None:
    import plotly.graph_objects as go

    figure = go.Figure()
    for name, curve in result["curves"].items():
        figure.add_trace(go.Scatter(x=[c for c, _ in curve], y=[a for _, a in curve], mode="lines+markers",
                                    name=name))
    figure.add_hline(y=result["target_accuracy"], line_dash="dot",
                     annotation_text=f"random at {result['budget']} labels: {percent(result['target_accuracy'])}")
    figure.update_layout(title=f"Grocery val accuracy vs number of labels (batches of {result['batch']})",
                         xaxis_title="labelled products", yaxis_title="val accuracy (fine, 81 classes)",
                         yaxis_tickformat=".0%", template="plotly_white")
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    # A fixed div id: regenerating from the same results gives the same file (no spurious diffs).
    figure.write_html(FIGURE, include_plotlyjs="cdn", div_id="label-efficiency")


def label_errors() -> str:
    result = load("label_errors")
    if result is None:
        return missing("label_errors.py")
    rows = []
    for name, row in result["summary"].items():
        errors, folds = name.split(", ")
        default = folds == "group-aware folds"
        rows.append([f"**{errors}**" if default else errors, f"**{folds}** (default)" if default else folds,
                     f"{row['precision_mean']:.3f} (min {row['precision_min']:.3f})",
                     f"{row['recall_mean']:.3f} (min {row['recall_min']:.3f})",
                     f"{row['cleanlab_precision_mean']:.3f} / {row['cleanlab_recall_mean']:.3f}"])
    return "\n".join([table(["corrupted labels", "folds", "precision, mean of seeds", "recall, mean of seeds",
                              "cleanlab confident learning: precision / recall"], rows), "",
                      f"{result['fraction']:.0%} of {result['train_photos']:,} grocery train labels corrupted, "
                      f"{result['seeds']} seeds each; flagged when the label's out-of-sample probability is below "
                      f"{result['max_label_probability']} and another category is predicted; near-duplicate groups "
                      f"at cosine {result['group_threshold']}. " + measured_on(result)])


def first_waits() -> str:
    result = load("first_waits")
    if result is None:
        return missing("first_waits.py")
    return "\n".join([table(["a new user's first …", "seconds"], [
        [f"*Load demo catalogue* ({result['demo_products']} photos imported, features computed; on a new machine "
         "the 8-bit model converted first)",
         result["load_demo_seconds"]],
        ["first *Retrain now*", result["first_train_seconds"]],
        ["first Explore map, on a machine that never drew one (after loading the demo and training)",
         result["first_map_new_machine_seconds"]],
        ["Explore again after a new label (the layout is cached; labels redrawn)",
         result["map_after_a_new_label_seconds"]],
        *([["for comparison: the Activity page (a table, no map) as the first page of a fresh server",
            result["first_page_fresh_server_seconds"]]] if "first_page_fresh_server_seconds" in result else []),
        ["first map of a fresh server, opened right after the server started (the map drawn ahead after "
         "the last import or training)", result["first_map_fresh_server_seconds"]],
        *([["the same for a catalogue changed outside the app (map not drawn yet; kernels in the disk cache)",
            result["first_map_fresh_server_not_drawn_seconds"]]]
          if "first_map_fresh_server_not_drawn_seconds" in result else []),
        ["worst case: new machine, fresh server, Explore opened before the background warm-up finished",
         result["first_map_new_machine_opened_at_once_seconds"]],
        ["map of 10,000 products (real features), fresh process, kernels in the disk cache",
         result["map_10000_products_seconds"]]]), "", measured_on(result)])


def coldstart() -> str:
    result = load("coldstart")
    if result is None:
        return missing("coldstart.py")
    rows = [[f"**{row['name']}**" if row["name"].endswith("the default") else row["name"], with_interval(row)]
            for row in result["rows"]]
    return "\n".join([table(["prototypes", "val accuracy (95% interval)"], rows), "",
                      f"{result['reference_images']} reference photos, {result['val_images']} val photos. "
                      + measured_on(result)])


def near_duplicates() -> str:
    result = load("near_duplicates")
    if result is None:
        return missing("near_duplicates.py")
    rows = []
    for row in result["sweep"]:
        threshold = f"**{row['threshold']:.2f} (default)**" if abs(row["threshold"] - result["threshold"]) < 1e-9 \
            else f"{row['threshold']:.2f}"
        rows.append([threshold, f"{row['recall']:.3f}", f"{row['precision_vs_distinct_products']:.3f}",
                     f"{row['precision_vs_all_other_photos']:.3f}"])
    by_edit = result["default"]["recall_photo_vs_copy_by_edit"]
    return "\n".join([table(["threshold", "recall", "precision vs distinct products",
                             "precision vs every other photo"], rows), "",
                      f"{result['photos']} photos × {result['copies_per_photo']} copies: {result['positive_pairs']} "
                      f"positive pairs, {result['distinct_product_pairs']} pairs of distinct products, "
                      f"{result['same_product_other_shot_pairs']} pairs of other shots of the same product. "
                      f"Recall at the default threshold by edit: "
                      + ", ".join(f"{name} {value:.3f}" for name, value in by_edit.items()) + ".", "",
                      measured_on(result)])


def speed() -> str:
    result = load("speed")
    if result is None:
        return missing("speed.py")
    rows = [
        ["**retrain the head on 2,640 products after correcting 10 labels** (median of 5)",
         f"**{result['retrain_2640_after_10_corrections_seconds']:.2f}**", "≤ 2"],
        ["retrain with unchanged labels (median of 5)", f"{result['retrain_2640_unchanged_seconds']:.2f}", ""],
        ["first training after an import (builds the view-scatter cache)",
         f"{result['retrain_2640_first_seconds']:.2f}", ""],
        ["predict 10,000 cached embeddings (load head, read, predict, store top-5)",
         f"{result['predict_10000_seconds']:.2f}", "≤ 1"],
        ["UMAP of 5,000 products, warm process", f"{result['umap_5000_warm_seconds']:.2f}", "≤ 5"],
        ["UMAP of 5,000 products, fresh process (numba kernels from the disk cache)",
         f"{result['umap_5000_fresh_process_seconds']:.2f}", ""],
    ]
    return "\n".join([table(["step", "seconds", "target"], rows), "",
                      f"Views re-read per corrected retrain: {result['retrain_after_corrections_products_read']}. "
                      + measured_on(result)])


def throughput() -> str:
    result = load("throughput")
    if result is None:
        return missing("throughput.py")
    rate = result["images_per_second"]

    def ceiling_for(name: str) -> float | None:
        """The model-only rate doing the same passes per photo, in the same arithmetic, as ``name``."""
        prefix = "float32: " if name.startswith("float32: ") else ""
        name = name[len(prefix):]
        if name.startswith(("plain Keras", "per-image")):
            # Keras runs float32: no ceiling of the default's own arithmetic is measured for it.
            return rate.get("ceiling, photo") if result.get("precision", "float32") == "float32" else None
        if name.startswith("ProductLens") and "(" in name:  # "ProductLens … (photo + 4 views): …"
            return rate.get(f"{prefix}ceiling, {name[name.index('(') + 1:name.index(')')]}")
        return None

    rows = [[name, f"{value:.1f}", percent(value / ceiling_for(name)) if ceiling_for(name) else ""]
            for name, value in rate.items()]
    levers = result.get("levers", {})
    lever_text = ", ".join(f"{name} {value}" for name, value in levers.items())
    return "\n".join([table(["pipeline", "photos/s", "of the ceiling with the same passes"], rows), "",
                      f"{result['images']} grocery train photos, backbone `{result['backbone']}` at "
                      f"{result['image_size']} px, batch {result['batch_size']}, "
                      f"{result.get('precision', 'float32')} arithmetic"
                      + (f" ({RUNTIMES[result['int8_runtime']]})" if result.get("int8_runtime") else "")
                      + " unless the row says float32. "
                      "Levers on the ceiling (images/s): "
                      f"{lever_text}. " + measured_on(result)])


def precision() -> str:
    result = load("precision")
    if result is None:
        return missing("precision.py")
    if "top1_changed" in result:  # an older result: float32 and bfloat16 only
        return missing("precision.py")
    rows = []
    for name in ("float32", "bfloat16", "int8", "int8 OpenVINO"):
        if name not in result:  # measured before OpenVINO ran the 8-bit graph
            continue
        row = result[name]
        label = {"int8": "int8, ONNX Runtime", "int8 OpenVINO": "int8, OpenVINO"}.get(name, name) \
            if "int8 OpenVINO" in result else name
        default = name.split()[0] == result.get("default") and (
            name.split()[0] != "int8" or row.get("runtime", "onnxruntime") == result.get("default_int8_runtime",
                                                                                     "onnxruntime"))
        rows.append([label + (" (default)" if default else ""), row["photos_per_second"],
                     with_interval(row["accuracy"]), row["head_trained_on"], row.get("top1_changed", ""),
                     row.get("prediction_vector_cosine", {}).get("min", ""), f"{row.get('speedup', 1.0)}×"])
    return "\n".join([table(["precision", "photos/s (with views)", "val accuracy (95% interval)", "head trained on",
                             "val photos whose top-1 differs from float32", "prediction-vector cosine to float32, min",
                             "speed-up"], rows), "",
                      f"{result['photos']} val photos with their crop views; native bfloat16 on this CPU: "
                      f"{result['cpu_has_native_bfloat16']}"
                      + (f"; AMX: {result['cpu_has_amx']}, so the 8-bit graph runs on "
                         f"{RUNTIMES[result['default_int8_runtime']]} by default" if "cpu_has_amx" in result else "")
                      + ". " + between_runtimes(result) + measured_on(result)])


RUNTIMES = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}


def between_runtimes(result: dict) -> str:
    row = result.get("int8 OpenVINO", {})
    if "top1_changed_from_onnxruntime" not in row:
        return ""
    cosine = row["prediction_vector_cosine_to_onnxruntime"]
    return (f"OpenVINO against ONNX Runtime (both int8, one head): top-1 differs for "
            f"{row['top1_changed_from_onnxruntime']} val photos, prediction-vector cosine min {cosine['min']}, "
            f"median {cosine['median']}. ")


def app_latency() -> str:
    result = load("app_latency")
    if result is None:
        return missing("app_latency.py")
    return "\n".join([table(["what", "seconds"], [
        [f"upload {result['upload_photos']} photos → predictions shown (backbone already loaded)",
         result["upload_to_predictions_seconds"]],
        *([["of which until the summary line above them shows", result["upload_to_summary_seconds"]]]
          if "upload_to_summary_seconds" in result else []),
        *([[f"another {result['upload_photos']} photos, the page reloaded (the browser has met the results "
            "table's code before)", result["second_upload_to_predictions_seconds"]]]
          if "second_upload_to_predictions_seconds" in result else []),
        [f"Explore, first render of {result['explore_products']} products (UMAP computed)",
         result["explore_first_render_cold_seconds"]],
        ["Explore, reopened (projection cached)", result["explore_first_render_warm_seconds"]]]), "",
        *([table(["labelling on Review", "labels per minute"], [
            [f"{result['labelling_cards']} cards with the key 1 (top suggestion, focus moves on)",
             result["labels_per_minute_keys"]],
            [f"{result['labelling_cards']} cards clicking the top-suggestion button",
             result["labels_per_minute_clicks"]]]),
           "", f"Scripted on a catalogue of {result['review_catalogue_products']:,} products: each label waits "
               "until it is stored and the page has rerun; a script moves no mouse, so for a person the "
               "keyboard's lead is larger.", ""] if "labels_per_minute_keys" in result else []),
        measured_on(result)])


def open_set() -> str:
    result = load("open_set")
    if result is None:
        return missing("open_set.py")

    def auroc(value: dict) -> str:
        return f"{value['value']:.3f} ({value['low']:.3f}–{value['high']:.3f})"

    rows = [[row["protocol"], row["splits"], f"{row['known_val_photos']} / {row['unknown_val_photos']}",
             auroc(row["auroc_combined"]), auroc(row["auroc_distance"]), auroc(row["auroc_confidence"]),
             auroc(row["auroc_similarity"]), percent(row["unknown_flagged"]), percent(row["known_flagged"])]
            for row in result["rows"]]
    return "\n".join([table(["labelled categories", "splits", "val photos known / unknown",
                             "AUROC, the flag's score (distance + confidence standard scores)",
                             "AUROC, distance to nearest labelled category alone (stops 23-25)",
                             "AUROC, confidence alone", "AUROC, similarity to nearest labelled product (until stop 23)",
                             "unknown flagged", "known flagged"], rows), "",
                      f"AUROC averaged over the splits, 95% bootstrap interval over the {result['val_photos']} val "
                      f"photos; flags at the app's threshold (quantile {result['quantile']}). " + measured_on(result)])


def propagation() -> str:
    result = load("propagation")
    if result is None:
        return missing("propagation.py")
    rows = [[row["propagation"], with_interval(row["val"]), percent(row.get("hold_out_accuracy")),
             row["val_photos_propagated"],
             f"{row['val_propagated_right']} of {row['val_photos_propagated']}" if row["val_photos_propagated"] else ""]
            for row in result["rows"]]
    ungrouped = result.get("hold_out_accuracy_without_groups")
    return "\n".join([table(["near-duplicate propagation", "val accuracy (95% interval)",
                             "hold-out accuracy (Train page)", "val photos that took a copied label",
                             "copied label right"], rows), "",
                      (f"The hold-out keeps near-identical shots together; without that it said "
                       f"{percent(ungrouped)} (twins of training photos held out). " if ungrouped else "")
                      + measured_on(result)])


def fine_tuning() -> str:
    result = load("fine_tuning")
    if result is None:
        return missing("fine_tuning.py")
    rows = [[row["name"], with_interval(row["classifier"]), with_interval(row["similar_products"]),
             row["seconds"]] for row in result["rows"]]
    tuned = next(row for row in result["rows"] if "fine_tune_seconds" in row)
    return "\n".join([table(["features", "val fine accuracy (95% interval)",
                             "similar products: nearest train photo's category right", "seconds, whole step"],
                            rows), "",
                      f"The fine-tuned row's {tuned['seconds']} s: activations of {result['train_photos']} "
                      f"labelled photos (6 passes each) {tuned['activations_seconds']} s "
                      + (f"({tuned['activations_cached_before']} of them read from the workspace cache, where an "
                         "earlier run computed them; computing them is about as long as embedding the photos), "
                         if tuned.get("activations_cached_before") else "(computed, then kept in the workspace "
                         "cache for the next fine-tune), ")
                      + f"fine-tuning {tuned['fine_tune_seconds']} s (loss per "
                      f"epoch {', '.join(str(loss) for loss in tuned['fine_tune_loss'])}), the catalogue's "
                      f"features with the tuned network {tuned['fine_tuned_embedding_seconds']} s, the head "
                      f"{tuned['head_seconds']} s. " + measured_on(result)])


def ray_throughput() -> str:
    result = load("ray_throughput")
    if result is None:
        return missing("ray_throughput.py")
    rows = [[row.get("step", "embed"), row["engine"], row["photos"], row["seconds"], row["photos_per_second"],
             f"{row['vs_in_process']:.2f}×"] for row in result["rows"]]
    return "\n".join([table(["step", "engine", "photos", "seconds", "photos/s", "vs in-process"], rows), "",
                      "Import: read, check, hash and store each photo, register it with its label. Embed: default "
                      f"embedder ({result['backbone']}, {result['views']} crop views). Ray rows include starting "
                      "Ray (and each embedding worker's backbone). " + measured_on(result)])


def ann() -> str:
    result = load("ann")
    if result is None:
        return missing("ann.py")
    rows = [[row["index"], row["build_seconds"], row["query_ms"], f"{row['recall_at_10']:.3f}", row["memory_mb"]]
            for row in result["rows"]]
    pairs = result.get("near_duplicates")
    swept = (f"Near-duplicate pairs (cosine ≥ {pairs['threshold']}) among the real photos and their crop views: "
             "the sweep through the cells (each with the products whose second-nearest centre it is) finds "
             f"{pairs['found']:,} of the {pairs['pairs']:,} that all pairs find "
             f"(recall {pairs['recall']:.2f}; {pairs['not_in_all_pairs']} more at the threshold's edge, 8-bit "
             f"rounding), sweeping all {result['products']:,} products in {pairs['sweep_seconds']} s. "
             ) if pairs else ""
    return "\n".join([table(["index", "build s", "one query, ms", "recall@10 vs exact", "memory MB"], rows), "",
                      f"{result['products']:,} products × {result['dim']} dimensions, {result['queries']} queries. "
                      + swept + measured_on(result)])


def database() -> str:
    result = load("database")
    if result is None:
        return missing("database.py")
    reads = list(result["rows"][0]["reads_ms"])
    header = ["step"] + [row["database"] for row in result["rows"]]
    rows = [[f"{name}, ms"] + [row["reads_ms"][name] for row in result["rows"]] for name in reads]
    rows.append(["one correction with its optimistic check, ms"] + [row["one_correction_ms"]
                                                                     for row in result["rows"]])
    rows.append(["corrections/s, 4 processes on the same 200 products"] + [
        f"{row['concurrent']['per_second']} ({row['concurrent']['conflicts']} refused as stale)"
        for row in result["rows"]])
    parts = {"products": "writing the product rows, s", "labels": "writing the import labels (one event each), s",
             "embeddings": "writing the vectors, s", "predictions": "writing the predictions, s"}
    for part in result["rows"][0]["fill_seconds"]:
        rows.append([parts.get(part, part)] + [row["fill_seconds"][part] for row in result["rows"]])
    return "\n".join([table(header, rows), "",
                      f"{result['products']:,} products ({result['labelled']:,} labelled), one {result['dim']}-d "
                      f"float16 vector and one model version's top-3 predictions each; SQLAlchemy "
                      f"{result['sqlalchemy']}, psycopg 3. " + measured_on(result)])


def review_scale() -> str:
    result = load("review_scale")
    if result is None:
        return missing("review_scale.py")
    postgresql = load("review_scale_postgresql")
    same = postgresql is not None and (postgresql["products"], postgresql["dim"]) == (result["products"], result["dim"])
    header = ["step", "SQLite, s"] + (["PostgreSQL, s"] if same else [])
    rows = [[step, seconds] + ([postgresql["seconds"].get(step, "")] if same else [])
            for step, seconds in result["seconds"].items()]
    notes = [f"{result['products']:,} synthetic products (a third labelled, {result['dim']}-d vectors, "
             "top-3 predictions each). SQLite: " + measured_on(result)]
    if same:
        notes.append("PostgreSQL (a throw-away local server over loopback, "
                     "`python benchmarks/review_scale.py --postgresql`): " + measured_on(postgresql))
    return "\n".join([table(header, rows), "", " ".join(notes)])


def scale(name: str = "scale") -> str:
    result = load(name)
    if result is None:
        return missing("scale.py" + (" --postgresql" if name != "scale" else ""))
    rows = []
    for row in result["rows"]:
        details = [f"{row['milliseconds']} ms, recall@10 {row['recall_at_10']:.3f}" if "milliseconds" in row else "",
                   f"fitted on {row['fitted_on']:,}" if "fitted_on" in row else "",
                   f"{row['groups']:,} groups" if "groups" in row else "",
                   f"{row['products']:,} products" if "products" in row and row["group"] == "predict" else ""]
        rows.append([row["step"], row["seconds"], f"{row['peak_memory_mb']:,}", "; ".join(d for d in details if d)])
    fill = result.get("fill_seconds")
    written = f"; writing it took {round(sum(fill.values()))} s" if fill else ""
    return "\n".join([table(["step", "seconds", "process peak memory, MB", ""], rows), "",
                      f"{result['products']:,} synthetic products (1,000 more for each run's Explore step; real "
                      "grocery features with noise, "
                      f"{result['dim']}-d float16; a third labelled; top-3 predictions each), {result['database']}"
                      + (f", {result['disk_gb']} GB on disk" if "disk_gb" in result else "")
                      + f"{written}. " + measured_on(result) + _row_provenance(result)])


def _row_provenance(result: dict) -> str:
    """Which groups of rows an earlier run measured (``--only`` reruns some and keeps the others)."""
    earlier = {}
    here = (result.get("machine") or {}).get("cpu")
    for row in result["rows"]:
        if row.get("commit", result["commit"]) != result["commit"]:
            cpu = (row.get("machine") or {}).get("cpu")
            where = f" ({cpu}, {row['machine'].get('cores')} cores)" if cpu and cpu != here else ""
            when, groups = earlier.get((row["commit"], where), (row["measured_at"], []))
            earlier[(row["commit"], where)] = (min(when, row["measured_at"]), groups + [row["group"]])
    return "".join(f" The {', '.join(dict.fromkeys(groups))} rows: measured {when} on commit `{commit}`{where}."
                   for (commit, where), (when, groups) in sorted(earlier.items(), key=lambda item: item[1][0]))


def reduced_vectors() -> str:
    result = load("reduced_vectors")
    if result is None:
        return missing("reduced_vectors.py")
    rows = [[row["vectors"], f"{row['bytes_per_vector']:,}", with_interval(row["val"]),
             with_interval(row["similar_products"]), row["million_products_gb"]] for row in result["rows"]]
    return "\n".join([table(["stored vectors", "bytes per product", "val fine accuracy",
                             "similar products (nearest train photo's category)", "GB at 1M products"], rows), "",
                      measured_on(result)])


def robustness() -> str:
    result = load("robustness")
    if result is None:
        return missing("robustness.py")
    rows = [[case["input"], case["outcome"], case["details"].replace("|", "/")] for case in result["cases"]]
    return "\n".join([table(["input", "outcome", "details"], rows), "",
                      f"Every outcome as expected: {result['as_expected']}; files written outside the workspace: "
                      f"{result['files_outside_workspace']}; peak memory {result['peak_memory_mb']} MB. "
                      + measured_on(result)])


SECTIONS = {"grocery-benchmark": grocery, "ablation": ablation, "label-efficiency": label_efficiency,
            "label-errors": label_errors, "coldstart": coldstart, "near-duplicates": near_duplicates,
            "speed": speed, "throughput": throughput, "precision": precision, "app-latency": app_latency,
            "first-waits": first_waits, "robustness": robustness, "open-set": open_set,
            "propagation": propagation, "fine-tuning": fine_tuning,
            "ray-throughput": ray_throughput, "ann": ann, "database": database,
            "reduced-vectors": reduced_vectors, "review-scale": review_scale, "scale": scale,
            "scale-postgresql": lambda: scale("scale_postgresql")}


def update_readme(readme: Path, sections: dict[str, str]) -> None:
    text = readme.read_text()
    for name, body in sections.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if start not in text or end not in text:
            sys.exit(f"{readme.name} has no {start} … {end} markers")
        text = text[:text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-readme", action="store_true", help="write the tables into README.md")
    args = parser.parse_args()
    sections = {name: build() for name, build in SECTIONS.items()}
    if args.update_readme:
        update_readme(REPO / "README.md", sections)
    else:
        for name, body in sections.items():
            print(f"## {name}\n\n{body}\n")


if __name__ == "__main__":
    main()
