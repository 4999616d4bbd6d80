"""The papers' theory models, trained on the same data as the transformers.

* :mod:`.gating`: Chan, Chen, György & Schuurmans 2024, the gated in-weight / in-context
  predictor trained with the paper's Algorithm 1 (bi-level update).
* :mod:`.kinetics`: Nguyen & Reddy 2024, the minimal model of memorising and generalising
  subcircuits learning at different rates, and the threshold K* it predicts.
"""
