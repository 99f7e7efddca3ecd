"""Model: the trainable head on top of the features, and its versions.

:class:`HeadClassifier` (scikit-learn style: configure, ``fit``, learned
attributes ending in ``_``) is a linear softmax head solved in closed form by
default; :func:`train_version` fits one on the catalogue's current labels and
stores it as a :class:`~core.storage.ModelVersion`; :func:`predict_catalog`
stores every product's top-k categories, flagging those unlike every labelled
product (:class:`NoveltyDetector`, "new category?"); :func:`cold_start` predicts
from reference photos before any label exists; :func:`fine_tune_version` trains the top
of the backbone too (:class:`FineTuner`, transfer learning's second stage); :class:`Taxonomy`
reads the category tree (coarse predictions rolled up from the fine ones, "Fruit › ?").
"""

from core.model.coldstart import cold_start
from core.model.fine_tuning import FineTuner, fine_tune_version
from core.model.head import HeadClassifier, NotFittedError
from core.model.hierarchy import Taxonomy, confusion_at_level
from core.model.metrics import classification_metrics, compare_versions
from core.model.novelty import NoveltyDetector
from core.model.prediction import predict_catalog
from core.model.training import EmbedderSettings, activate, embedder_for, load_version, train_version

__all__ = ["EmbedderSettings", "FineTuner", "HeadClassifier", "NotFittedError", "NoveltyDetector", "Taxonomy",
           "activate", "classification_metrics", "cold_start", "compare_versions", "confusion_at_level",
           "embedder_for", "fine_tune_version", "load_version", "predict_catalog", "train_version"]
