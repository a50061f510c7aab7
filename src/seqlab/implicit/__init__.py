"""Implicit layers: deep equilibrium models (`deq.py`) and the fixed-point solvers they use
(`solvers.py`). `ModelConfig.deq` turns a model's block stack into one DEQ layer."""
