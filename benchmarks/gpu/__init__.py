"""GPU benchmark runner: ``python -m benchmarks.gpu.run`` (``make bench-gpu``)."""
