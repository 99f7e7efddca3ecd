"""Jobs: multi-step work across storage, features and model.

Upload → embed → predict (:func:`import_and_predict`), retrain → predict
(:func:`retrain_and_predict`), cold start → predict, the whole evaluation loop
on two folders (:func:`evaluate`), and exports in formats other tools read.
Each reports progress through one callback so the app can draw one bar.
"""

from core.jobs.evaluate import evaluate
from core.jobs.export import export_classifier, export_embeddings, export_labels
from core.jobs.pipeline import (
    UploadResult,
    cold_start_and_predict,
    fine_tune_and_predict,
    import_and_predict,
    load_demo_and_embed,
    retrain_and_predict,
)

__all__ = ["UploadResult", "cold_start_and_predict", "evaluate", "export_classifier", "export_embeddings",
           "export_labels", "fine_tune_and_predict", "import_and_predict", "load_demo_and_embed", "retrain_and_predict"]
