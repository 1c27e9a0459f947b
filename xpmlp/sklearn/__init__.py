"""scikit-learn estimators that train with xpmlp: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for scikit-learn's (``pip install "scikit-learn>=1.8"``): ``estimators``
holds the two estimators, ``arrays`` the namespace and device that follow X, ``labels`` the
output layer each kind of target needs (softmax, one sigmoid, one per label, identity).

Imports from: xpmlp.errors, xpmlp.backend, xpmlp.core, xpmlp.train.
"""

from .estimators import MLPClassifier, MLPRegressor

__all__ = ["MLPClassifier", "MLPRegressor"]
