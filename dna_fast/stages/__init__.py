"""The pipeline's stages, one module each: what a stage reads from the run directory, what it writes there, and
the check that finds it done.

Today ``search`` lives here (:func:`dna_fast.stages.search.run_search_stage`); the other stages still run from
``dna_fast/train.py`` and move here one module per stage (``teacher``, ``distill``, ``rate``, ``search``,
``retrain``, ``evaluate``, ``rank_check``), with the run context in ``_context`` and ``train.py`` left as the small
runner (stage order, resume, errors, ``python -m dna_fast.train``). See docs/design.md.

A stage module imports the libraries it runs (``dna_fast.search``, ``dna_fast.rating``, ...), never the other way
round, and of the other stages only earlier ones (to read their outputs). This package imports nothing, so
``import dna_fast.stages.search`` loads only that stage.
"""
