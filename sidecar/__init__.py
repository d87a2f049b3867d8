"""routegate.sidecar: request classification (and the local llama.cpp model process)."""

from routegate.middleware.contracts import Classification, Classifier
from routegate.sidecar.heuristic import HeuristicClassifier

__all__ = ["Classification", "Classifier", "HeuristicClassifier"]
