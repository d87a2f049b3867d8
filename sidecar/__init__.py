"""routegate.sidecar: request classification (and the local llama.cpp model process)."""

from routegate.sidecar.heuristic import HeuristicClassifier
from routegate.sidecar.protocol import Classification, Classifier

__all__ = ["Classification", "Classifier", "HeuristicClassifier"]
