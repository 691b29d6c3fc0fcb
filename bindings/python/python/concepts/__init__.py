"""Personal concepts for vision-language models (Yo'LLaVA), from Python.

A thin binding of the Rust runtime (``concepts._concepts``): the same embedded runtime, concept
registry and trainer as the ``concepts`` command line and server.

>>> import concepts
>>> rt = concepts.Runtime()                      # the embedded toy model, the default registry
>>> rt.install("bo.ycpt")                        # doctest: +SKIP
>>> rt.recognise("photo.png", ["bo"])["bo"].present   # doctest: +SKIP
"""

from ._concepts import (
    ChatStream,
    Concept,
    ConceptsError,
    ConflictError,
    InvalidInputError,
    LimitError,
    ModelError,
    NotFoundError,
    PackageError,
    Runtime,
    Score,
    StorageError,
    TrainingError,
    toy_dataset,
)

__all__ = [
    "ChatStream",
    "Concept",
    "ConceptsError",
    "ConflictError",
    "InvalidInputError",
    "LimitError",
    "ModelError",
    "NotFoundError",
    "PackageError",
    "Runtime",
    "Score",
    "StorageError",
    "TrainingError",
    "toy_dataset",
]
