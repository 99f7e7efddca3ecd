"""The trainable classification head: cached embeddings in, category probabilities out.

:class:`HeadClassifier` follows the scikit-learn estimator convention:
configuration in ``__init__``, learning in :meth:`~HeadClassifier.fit`, learned
state in attributes ending in ``_`` (``classes_``, ``model_``, ``metrics_``,
``history_``, ``validation_rows_``). The network is a small functional Keras
model: standardisation, input dropout, an optional hidden layer with dropout (off
by default: on the grocery benchmark a linear softmax generalised better to new
shots), and a softmax ``predictions`` layer. Training is class-weighted (rare
categories count as much as common ones) and holds out a stratified validation
split for the metrics and the softmax temperature; near-identical shots
(``group_threshold``) are held out together, or a product would be judged against
its own twin and the accuracy and confidence would both come out too high. The
default linear head is solved in closed form (class-weighted ridge regression onto
one-hot targets, see :mod:`core.model._ridge`; the softmax temperature is fitted
on the validation split): about a second for the grocery train split, and as
accurate there as 200 epochs of AdamW. Augmented views can enter it as rows or,
much cheaper, summarised per product (``view_means`` and ``view_scatter``, see
:mod:`core.model.view_scatter`). A head with a hidden layer (or
``solver="adamw"``) trains by mini-batch AdamW with early stopping on the
validation split. By default the head is then refitted on all labelled products.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from core._internal.read_ahead import read_ahead
from core.model.metrics import classification_metrics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class NotFittedError(RuntimeError):
    """The head was used before ``fit`` (or ``load``)."""


SOLVERS = ("auto", "closed_form", "adamw")
# Grouping the hold-out compares every labelled product with every other: above this many, plain stratified.
GROUPED_SPLIT_UP_TO = 20_000


class HeadClassifier:
    def __init__(self, hidden_units: int = 0, dropout: float = 0.5, input_dropout: float = 0.2,
                 label_smoothing: float = 0.1, weight_decay: float = 1e-4, learning_rate: float = 1e-3,
                 batch_size: int = 256, max_epochs: int = 200, patience: int = 20,
                 validation_fraction: float = 0.15, class_weight: str | None = "balanced",
                 refit_full: bool = True, random_state: int = 0, solver: str = "auto", l2: float = 0.1,
                 group_threshold: float | None = 0.92):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if solver == "closed_form" and hidden_units:
            raise ValueError("the closed-form solver fits a linear head only: use hidden_units=0 or solver='adamw'")
        if group_threshold is not None and not 0.0 < group_threshold <= 1.0:
            raise ValueError(f"group_threshold must be in (0, 1] or None, got {group_threshold}")
        self.solver = solver
        self.l2 = l2
        self.group_threshold = group_threshold
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.input_dropout = input_dropout
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.class_weight = class_weight
        self.refit_full = refit_full
        self.random_state = random_state

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in (
            "hidden_units", "dropout", "input_dropout", "label_smoothing", "weight_decay", "learning_rate",
            "batch_size", "max_epochs", "patience", "validation_fraction", "class_weight", "refit_full",
            "random_state", "solver", "l2", "group_threshold")}

    @property
    def resolved_solver(self) -> str:
        if self.solver == "auto":
            return "adamw" if self.hidden_units else "closed_form"
        return self.solver

    # -- model ----------------------------------------------------------------
    def _build(self, feature_dim: int, num_classes: int, mean: np.ndarray, variance: np.ndarray):
        import keras
        from keras import layers

        inputs = keras.Input(shape=(feature_dim,), name="embedding")
        x = layers.Normalization(mean=mean, variance=variance, name="standardize")(inputs)
        if self.input_dropout:
            x = layers.Dropout(self.input_dropout, name="input_dropout")(x)
        if self.hidden_units:
            x = layers.Dense(self.hidden_units, activation="relu", name="hidden")(x)
            if self.dropout:
                x = layers.Dropout(self.dropout, name="head_dropout")(x)
        outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
        return keras.Model(inputs, outputs, name="productlens_head")

    def _split(self, labels: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Stratified hold-out: each class with >= 2 examples gives ~validation_fraction of them.

        With ``groups`` (one id per row: near-identical shots share one) a group is
        held out whole or not at all, so no product is validated against its own twin
        in training; a class whose groups are all too big to hold out is split as without groups.
        Each class draws from its own seed, so correcting a few labels changes only
        their classes' share (what lets a retrain reuse the rest, see core.model.view_scatter).
        """
        train, validation = [], []
        for name in np.unique(labels):
            rng = np.random.default_rng([self.random_state, zlib.crc32(str(name).encode())])
            members = np.flatnonzero(labels == name)
            take = int(round(len(members) * self.validation_fraction)) if len(members) >= 2 else 0
            if len(members) >= 2 and self.validation_fraction > 0:
                take = max(1, min(take, len(members) - 1))
            if groups is None:
                members = rng.permutation(members)
                validation.extend(members[:take])
                train.extend(members[take:])
                continue
            _, first, unit_of = np.unique(groups[members], return_index=True, return_inverse=True)
            # In order of first row: the same units in the same order whatever happens to other classes.
            units = [members[unit_of == unit] for unit in np.argsort(first)]
            held, ceiling = [], max(take, int(round(1.5 * take)))
            for unit in rng.permutation(len(units)):
                if sum(map(len, held)) >= take:
                    break
                if sum(map(len, held)) + len(units[unit]) <= min(ceiling, len(members) - 1):
                    held.append(units[unit])
            held_rows = np.concatenate(held) if held else np.zeros(0, np.int64)
            if take and not len(held_rows):
                # A category that is one series of shots could not be judged at all: its products are
                # split as without groups (twins then vouch for each other, the best there is).
                held_rows = rng.permutation(members)[:take]
            validation.extend(held_rows)
            train.extend(np.setdiff1d(members, held_rows))
        return np.array(sorted(train), dtype=np.int64), np.array(sorted(validation), dtype=np.int64)

    def _groups(self, features: np.ndarray) -> np.ndarray | None:
        """Near-identical shots' group ids for the hold-out split (None: plain stratified)."""
        if self.group_threshold is None or not self.validation_fraction or len(features) > GROUPED_SPLIT_UP_TO:
            return None
        from core.curation.similarity import series_ids

        return series_ids(features, self.group_threshold)

    def _split_with_propagated(self, labels: np.ndarray, propagated_from: np.ndarray | None,
                               features: np.ndarray | None = None):
        """``(train, validation, excluded from the hold-out fit)`` row indices; see :meth:`fit`."""
        if propagated_from is None:
            train, validation = self._split(labels, None if features is None else self._groups(features))
            return train, validation, validation
        propagated_from = np.asarray(propagated_from, dtype=np.int64)
        if propagated_from.shape != (len(labels),):
            raise ValueError("propagated_from needs one entry per row")
        given = np.flatnonzero(propagated_from < 0)
        if (propagated_from >= 0).any() and (propagated_from[propagated_from >= 0] >= len(labels)).any():
            raise ValueError("propagated_from points past the last row")
        groups = None if features is None else self._groups(features[given])
        train, validation = (given[part] for part in self._split(labels[given], groups))
        leaking = np.flatnonzero(np.isin(propagated_from, validation))
        copies = np.setdiff1d(np.flatnonzero(propagated_from >= 0), leaking)
        return np.union1d(train, copies), validation, np.union1d(validation, leaking)

    def fit(self, features: np.ndarray, labels: Sequence[str], augmented_views: Sequence[np.ndarray] = (),
            progress=None, view_scatter=None, view_means: np.ndarray | None = None,
            propagated_from: np.ndarray | None = None) -> "HeadClassifier":
        """Train on ``features`` (n, feature_dim) and string ``labels`` (n,).

        ``augmented_views``: optional arrays shaped like ``features`` holding the
        features of augmented copies (crops, flips) of the same products; they are
        extra training rows, and a product held out for validation is held out
        with all its views. Or, for the closed-form solver, summarised: ``view_means``
        (shaped like ``features``: each product's photo averaged with its views, the
        vectors it is predicted from) and ``view_scatter`` (a
        :class:`core.model.view_scatter.ViewScatter` of the same products): the same fit
        from one row per product; ``features`` then only set the standardisation,
        and the validation metrics score ``view_means``. ``progress(epoch,
        max_epochs, message)`` is called after every epoch.

        ``propagated_from`` marks rows whose label was not given by a person but
        copied from a near-identical labelled product: ``-1`` for a labelled row, else
        the row it was copied from. Such rows only ever train: they are never
        validated on, and they leave training whenever their source is held out (a
        copy of a validation product's label would leak its answer).
        """
        import keras

        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray([str(label) for label in labels], dtype=object)
        if features.ndim != 2 or len(features) != len(labels):
            raise ValueError(f"features must be (n, dim) with one label per row; got {features.shape} "
                             f"and {len(labels)} labels")
        if not np.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values")
        augmented_views = [np.asarray(view, dtype=np.float32) for view in augmented_views]
        if any(view.shape != features.shape for view in augmented_views):
            raise ValueError("each augmented view must have the same shape as features")
        self.classes_ = np.array(sorted(set(labels)), dtype=object)
        if len(self.classes_) < 2:
            raise ValueError(f"training needs at least 2 categories with labelled products; "
                             f"found {len(self.classes_)}")
        start = time.perf_counter()
        class_index = {name: i for i, name in enumerate(self.classes_)}
        targets = np.array([class_index[name] for name in labels], dtype=np.int64)
        train, validation, excluded = self._split_with_propagated(labels, propagated_from, features)
        self.validation_rows_ = validation

        if (view_scatter is None) != (view_means is None):
            raise ValueError("view_scatter and view_means come together")
        if view_means is not None:
            view_means = np.asarray(view_means, dtype=np.float32)
            if view_means.shape != features.shape or not np.isfinite(view_means).all():
                raise ValueError("view_means must be finite and have the same shape as features")
        if self.resolved_solver == "closed_form":
            return self._fit_closed_form(features, labels, targets, train, validation, augmented_views, start,
                                         progress, view_scatter, view_means, excluded)
        if view_scatter is not None:
            raise ValueError("view_scatter needs the closed-form solver (a linear head); give the views as "
                             "augmented_views rows to train with AdamW")
        keras.utils.set_random_seed(self.random_state)
        self.model_ = self._build(features.shape[1], len(self.classes_), features[train].mean(axis=0),
                                  features[train].var(axis=0) + 1e-6)
        history = _train(self.model_, features, targets, train, validation, self, progress, augmented_views)
        self.history_ = history
        self.best_epoch_ = history["best_epoch"]
        self.validation_probabilities_ = np.zeros((0, len(self.classes_)))
        if len(validation):
            validation_probabilities = self._predict(features[validation])
            self.validation_probabilities_ = validation_probabilities
            self.metrics_ = classification_metrics(labels[validation],
                                                   self.classes_[validation_probabilities.argmax(axis=1)],
                                                   self.classes_, validation_probabilities.max(axis=1))
        else:
            self.metrics_ = classification_metrics([], [], self.classes_)
        if self.refit_full and len(validation):
            # Validation chose the epoch count; now learn from every labelled product.
            keras.utils.set_random_seed(self.random_state)
            self.model_ = self._build(features.shape[1], len(self.classes_), features.mean(axis=0),
                                      features.var(axis=0) + 1e-6)
            everything = np.arange(len(features))
            _train(self.model_, features, targets, everything, np.zeros(0, np.int64), self, progress,
                   augmented_views, epochs=self.best_epoch_)
        self.n_train_ = int(len(features))
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _fit_closed_form(self, features, labels, targets, train, validation, augmented_views, start, progress,
                         view_scatter=None, view_means=None, excluded=None):
        from core.model._ridge import fit_standardised_ridge_many, product_weights

        steps = 2 if self.refit_full and len(validation) else 1
        # Both fits come from one set of per-part moments: the hold-out fit is the non-validation
        # part's, the refit their sum.
        excluded = validation if excluded is None else excluded
        held_out = [excluded] + ([np.zeros(0, np.int64)] if steps == 2 else [])
        balanced = self.class_weight == "balanced"
        summarised = None
        if view_scatter is not None:
            weights = product_weights(targets, len(self.classes_), balanced)
            summarised = ([view_scatter.weighted(weights)]
                          + [view_scatter.weighted(weights, part) if len(part) else None for part in held_out],
                          view_scatter.views)
        mean, variance, fits = fit_standardised_ridge_many(
            features, targets, len(self.classes_), self.l2, held_out, augmented_views, balanced=balanced,
            view_means=view_means, view_scatter=summarised)
        solutions = [(mean, variance, *fit) for fit in fits]
        scored = features if view_means is None else view_means

        def scores(solution, rows):
            mean, variance, weights, bias = solution
            return ((scored[rows] - mean) / np.sqrt(variance)) @ weights + bias

        return self._calibrated(labels, targets, train, validation, solutions, scores, features.shape[1], start,
                                progress)

    def _calibrated(self, labels, targets, train, validation, solutions, scores, feature_dim, start, progress):
        """The closed-form fits made a model: temperature from held-out scores, metrics, the Keras head."""
        from core.model._ridge import cap_temperature, fit_temperature

        steps = len(solutions)
        solution = solutions[0]
        if progress:
            progress(1, steps, "solved")
        # Temperature: fitted where the scores are honest (held-out products), else on the training rows.
        calibration = validation if len(validation) else train
        held_out_scores = scores(solution, calibration)
        temperature = cap_temperature(held_out_scores, targets[calibration],
                                      fit_temperature(held_out_scores, targets[calibration]))
        self.validation_probabilities_ = np.zeros((0, len(self.classes_)))
        if len(validation):
            held_out = (held_out_scores if calibration is validation else scores(solution, validation)) * temperature
            exponentials = np.exp(held_out - held_out.max(axis=1, keepdims=True))
            self.validation_probabilities_ = exponentials / exponentials.sum(axis=1, keepdims=True)
            confidence = self.validation_probabilities_.max(axis=1)
            self.metrics_ = classification_metrics(labels[validation], self.classes_[held_out.argmax(axis=1)],
                                                   self.classes_, confidence)
        else:
            self.metrics_ = classification_metrics([], [], self.classes_)
        if steps == 2:
            solution = solutions[1]
            if progress:
                progress(2, steps, "refitted on every labelled product")
        mean, variance, weights, bias = solution
        self.model_ = self._build(feature_dim, len(self.classes_), mean, variance)
        self.model_.get_layer("predictions").set_weights([weights * temperature, bias * temperature])
        self.temperature_ = float(temperature)
        self.history_ = {"solver": "closed_form", "temperature": self.temperature_}
        self.best_epoch_ = 0
        self.n_train_ = int(len(labels))
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def fit_streamed(self, read, product_ids: Sequence[int], labels: Sequence[str], chunk: int = 20_000,
                     progress=None) -> "HeadClassifier":
        """The closed-form fit without holding every vector: ``read(ids)`` returns the vectors of ``ids`` (row for
        row), asked for ``chunk`` products at a time.

        The same split, class weights and solution as :meth:`fit` on the same rows
        with ``group_threshold=None`` (above ``GROUPED_SPLIT_UP_TO`` products the
        split is not grouped anyway); no views or propagated rows. Each chunk adds to
        the moments of its part (held out or not), so memory holds two Gram matrices
        and one chunk, plus the held-out products' vectors for the temperature.
        """
        from core.model._ridge import product_weights, streamed_ridge

        if self.resolved_solver != "closed_form":
            raise ValueError("fit_streamed fits the closed-form linear head only (solver 'auto' or 'closed_form', "
                             "no hidden layer)")
        start = time.perf_counter()
        product_ids = np.asarray(product_ids, dtype=np.int64)
        labels = np.asarray([str(label) for label in labels], dtype=object)
        if product_ids.ndim != 1 or len(product_ids) != len(labels):
            raise ValueError(f"one label per product: {len(product_ids)} products, {len(labels)} labels")
        self.classes_ = np.array(sorted(set(labels)), dtype=object)
        if len(self.classes_) < 2:
            raise ValueError(f"training needs at least 2 categories with labelled products; "
                             f"found {len(self.classes_)}")
        targets = np.searchsorted(self.classes_, labels)
        train, validation = self._split(labels)
        self.validation_rows_ = validation
        held_out = np.zeros(len(labels), bool)
        held_out[validation] = True
        weights = product_weights(targets, len(self.classes_), self.class_weight == "balanced")
        refit = self.refit_full and len(validation)

        kept = []  # the held-out products' vectors, in row order: scored for the temperature

        def chunks():
            # The next chunk is read while this one is summed.
            spans = [np.arange(first, min(first + chunk, len(product_ids)))
                     for first in range(0, len(product_ids), chunk)]
            for rows, vectors in read_ahead(spans, lambda rows: _read_rows(read, product_ids[rows])):
                kept.append(vectors[held_out[rows]])
                yield rows, vectors

        mean, variance, fits = streamed_ridge(chunks(), targets, weights, held_out, len(self.classes_), self.l2,
                                              refit=bool(refit))
        solutions = [(mean, variance, *fit) for fit in fits]
        held_out_vectors = np.concatenate(kept)

        def scores(solution, rows):
            vectors = held_out_vectors if np.array_equal(rows, validation) else np.concatenate(
                [_read_rows(read, product_ids[rows[first:first + chunk]]) for first in range(0, len(rows), chunk)])
            mean, variance, weights, bias = solution
            # The standardisation folded into the weights: no standardised copy of every held-out vector.
            scaled = weights / np.sqrt(variance)[:, None]
            return vectors.astype(np.float32, copy=False) @ scaled + (bias - mean @ scaled)

        return self._calibrated(labels, targets, train, validation, solutions, scores, len(mean), start, progress)

    def _predict(self, features: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        outputs = [self.model_(tf.constant(features[i:i + 8192]), training=False).numpy()
                   for i in range(0, len(features), 8192)]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes_)), np.float32)

    # -- inference --------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "model_"):
            raise NotFittedError("this HeadClassifier is not trained yet: call fit() or HeadClassifier.load()")

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self._check_fitted()
        features = np.asarray(features, dtype=np.float32)
        if len(features) == 0:
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        return np.asarray(self._predict(features), dtype=np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        probabilities = self.predict_proba(features)
        return self.classes_[probabilities.argmax(axis=1)]

    def top_k(self, features: np.ndarray, k: int = 5) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` most likely categories per row and their probabilities, best first."""
        probabilities = self.predict_proba(features)
        k = min(k, len(self.classes_))
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return ([list(self.classes_[row]) for row in order],
                np.take_along_axis(probabilities, order, axis=1))

    # -- persistence --------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Save atomically: written to a temporary name, then renamed into place."""
        self._check_fitted()
        from core.storage.atomic import atomic_path

        path = Path(path)
        with atomic_path(path) as temporary:
            self.model_.save(temporary)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, classes: Sequence[str]) -> "HeadClassifier":
        import keras

        head = cls()
        head.model_ = keras.models.load_model(path, compile=False)
        head.classes_ = np.array(list(classes), dtype=object)
        if head.model_.output_shape[-1] != len(head.classes_):
            raise ValueError(f"model in {path} has {head.model_.output_shape[-1]} outputs but "
                             f"{len(head.classes_)} classes were given")
        return head


def _read_rows(read, product_ids: np.ndarray) -> np.ndarray:
    vectors = np.asarray(read(product_ids))
    if vectors.dtype not in (np.float16, np.float32):  # float16 as stored stays so: the fit converts it once
        vectors = vectors.astype(np.float32)
    # A NaN or infinity anywhere makes its row's sum one: checked without a boolean copy of the chunk.
    if vectors.ndim != 2 or len(vectors) != len(product_ids) \
            or not np.isfinite(vectors.sum(axis=1, dtype=np.float32)).all():
        raise ValueError(f"read() must return one finite vector per product; got {vectors.shape} for "
                         f"{len(product_ids)} products")
    return vectors


def _train(model, features, targets, train, validation, settings: HeadClassifier, progress,
           augmented_views=(), epochs=None) -> dict:
    """Mini-batch AdamW through ``model.fit``, class-weighted, early stopping on the validation loss.

    With ``epochs`` given (the refit on everything) it trains exactly that long.
    """
    import keras

    from core.model._ridge import balanced_class_weights

    num_classes = model.output_shape[-1]
    if settings.class_weight == "balanced":
        class_weights = balanced_class_weights(targets[train], num_classes)
    else:
        class_weights = np.ones(num_classes, np.float32)
    rows = np.concatenate([features[train]] + [view[train] for view in augmented_views])
    row_targets = np.tile(targets[train], 1 + len(augmented_views))
    # Small catalogues still get several updates per epoch.
    batch_size = int(min(settings.batch_size, max(16, int(np.ceil(len(rows) / 4)))))
    max_epochs = int(epochs or settings.max_epochs)
    model.compile(
        # Decoupled weight decay: as regularising as an L2 loss term, without its per-step cost.
        optimizer=keras.optimizers.AdamW(settings.learning_rate, weight_decay=settings.weight_decay or 0.0),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(settings.label_smoothing)))
    callbacks = []
    early_stopping = None
    validating = len(validation) > 0 and epochs is None
    if validating:
        early_stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=settings.patience, min_delta=1e-4,
                                                       restore_best_weights=True)
        callbacks.append(early_stopping)
    if progress:
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, _logs: progress(epoch + 1, max_epochs, f"epoch {epoch + 1}")))
    one_hot = np.eye(num_classes, dtype=np.float32)
    fitted = model.fit(
        rows, one_hot[row_targets], sample_weight=class_weights[row_targets], batch_size=batch_size,
        epochs=max_epochs, shuffle=True, verbose=0, callbacks=callbacks,
        validation_data=(features[validation], one_hot[targets[validation]]) if validating else None)
    history = {"loss": fitted.history["loss"], "val_loss": fitted.history.get("val_loss", [])}
    stopped_early = early_stopping is not None and early_stopping.best_epoch is not None
    history["best_epoch"] = early_stopping.best_epoch + 1 if stopped_early else max_epochs
    return history
