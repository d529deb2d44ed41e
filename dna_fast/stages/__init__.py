"""The pipeline's stages, one module each: what a stage reads from the run directory, what it writes there, and
the check that finds it done.

``teacher``, ``distill``, ``rate``, ``search``, ``retrain``, ``evaluate`` and ``rank_check`` each hold the stage
function ``stage_<name>(ctx)``, its input check ``check_inputs(ctx)``, ``input_present(ctx)`` and ``READS_DATA``,
and the readers of their outputs that later stages use (``search.found_architecture``, ``distill.supernet_done``,
...). ``_context`` holds the run :class:`~dna_fast.stages._context.Context` shared by all; ``_runner`` the stage
order, the input checks, resume and the summary (:func:`dna_fast.stages._runner.run`); ``dna_fast/train.py`` is the
command line (``python -m dna_fast.train``). See docs/design.md.

A stage module imports the libraries it runs (``dna_fast.search``, ``dna_fast.rating``, ...), never the other way
round, and of the other stages only earlier ones (to read their outputs). This package imports nothing, so
``import dna_fast.stages.search`` loads only that stage and the ones before it.
"""
