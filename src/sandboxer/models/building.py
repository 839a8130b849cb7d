"""When pydantic builds the validators of sand-boxer's models: read once, by
``models/base.py`` as it defines the base, so a process sets it before it imports a model.

``defer`` True: each model's validator is built at its first use instead of at import.
Core's keeper (``service/daemon.py``) sets it: it imports every model and uses a few, and
the keeper a first create starts then builds only the ones that create needs (~15 ms less
of it). Elsewhere they are built at import: FastAPI wraps a model in adapters of its own,
which defer with it and then warn about the ``Body`` alias they were built inside.
"""

defer = False
