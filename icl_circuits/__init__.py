"""icl-circuits: train small TransformerLens models on bursty data and study ICL vs IWL circuits."""

__version__ = "0.1.0"
