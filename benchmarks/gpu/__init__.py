"""GPU runners: ``check.sh`` / ``check.py`` (the one GPU check of a bare GPU machine, docs/gpu_check.md) and
``run.py`` (``make bench-gpu``: every GPU benchmark at full length)."""
