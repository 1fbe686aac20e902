"""Study 003's fitted SVM as a torch module, so that it ships as safetensors (never pickle).

A fitted :func:`bloodviz.svm.make_svm` pipeline is ``StandardScaler`` -> RBF ``SVC`` (one
classifier per pair of classes) -> one sigmoid calibrator per class. :meth:`SVMHead.from_fitted`
copies its arrays into buffers and :meth:`SVMHead.forward` recomputes scikit-learn's
``predict_proba`` from them: the RBF kernel against the support vectors, every pair's decision
value as one matrix product (each support vector's dual coefficient for each pair, zero where
it is not one of the pair's classes), scikit-learn's one-vs-rest vote transform, the
calibrators' sigmoids and their normalisation. It returns log-probabilities, so a softmax gives
the probabilities back and Grad-CAM differentiates the calibrated log-probability.

The buffers' shapes depend on the fit (the number of support vectors), so an unfitted head
holds empty ones and :meth:`size_from_weights` shapes them from a weights file before loading.
An unfitted head passes its features through (what the feature network alone gives).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

BUFFERS = ("mean", "scale", "support_vectors", "pair_coef", "intercept", "gamma", "a", "b")


class SVMHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name in BUFFERS:
            self.register_buffer(name, torch.zeros(0))

    @property
    def fitted(self) -> bool:
        return self.support_vectors.numel() > 0

    @property
    def num_classes(self) -> int:
        # one calibrator per class, but one alone for two classes
        return max(2, self.a.numel())

    def size_from_weights(self, stored: dict[str, torch.Tensor]) -> None:
        """Give every buffer the shape and dtype a weights file holds it in (its values are
        copied in next)."""
        for name in BUFFERS:
            if name in stored:
                setattr(self, name, torch.empty_like(stored[name], device="cpu"))

    @classmethod
    def from_fitted(cls, pipeline) -> SVMHead:
        """The arrays of a fitted ``StandardScaler -> CalibratedClassifierCV(SVC(rbf),
        ensemble=False, method="sigmoid")`` pipeline."""
        scaler, calibrated = pipeline[0], pipeline[-1]
        (member,) = calibrated.calibrated_classifiers_
        svc = member.estimator
        if svc.kernel != "rbf" or getattr(member, "method", "sigmoid") != "sigmoid":
            raise ValueError("SVMHead reproduces a sigmoid-calibrated RBF SVC only")
        classes = len(svc.classes_)
        starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
        pairs = [(i, j) for i in range(classes) for j in range(i + 1, classes)]
        pair_coef = np.zeros((len(svc.support_vectors_), len(pairs)))
        if classes == 2:
            # binary: scikit-learn's public dual_coef_ / intercept_ give its decision directly
            pair_coef[:, 0] = svc.dual_coef_[0]
        else:
            # libsvm's layout: for pair (i, j), class i's vectors carry dual_coef_[j - 1] and
            # class j's carry dual_coef_[i]
            for k, (i, j) in enumerate(pairs):
                own_i, own_j = slice(starts[i], starts[i + 1]), slice(starts[j], starts[j + 1])
                pair_coef[own_i, k] = svc.dual_coef_[j - 1, own_i]
                pair_coef[own_j, k] = svc.dual_coef_[i, own_j]
        head = cls()
        values = {
            "mean": scaler.mean_,
            "scale": scaler.scale_,
            "support_vectors": svc.support_vectors_,
            "pair_coef": pair_coef,
            "intercept": svc.intercept_,
            "gamma": np.array([svc._gamma]),
            "a": np.array([c.a_ for c in member.calibrators]),
            "b": np.array([c.b_ for c in member.calibrators]),
        }
        for name, value in values.items():
            # float64: the kernel's exponent over 2048 features loses digits in float32
            setattr(head, name, torch.as_tensor(np.asarray(value, dtype=np.float64)))
        return head

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """scikit-learn's ``predict_proba`` of the pipeline, in the features' dtype."""
        x = (features.to(self.mean.dtype) - self.mean) / self.scale
        sq_dist = (
            (x * x).sum(1, keepdim=True)
            - 2 * x @ self.support_vectors.T
            + (self.support_vectors**2).sum(1)
        )
        kernel = torch.exp(-self.gamma * sq_dist.clamp_min(0))
        decision = kernel @ self.pair_coef + self.intercept  # one column per pair of classes
        classes = self.num_classes
        if classes == 2:
            positive = torch.sigmoid(-(self.a * decision + self.b))
            probs = torch.cat([1 - positive, positive], dim=1)
        else:
            scores = self._one_vs_rest(decision, classes)
            probs = torch.sigmoid(-(self.a * scores + self.b))
            total = probs.sum(1, keepdim=True)
            probs = torch.where(total > 0, probs / total.clamp_min(1e-300), 1.0 / classes)
        return probs.to(features.dtype)

    @staticmethod
    def _one_vs_rest(decision: torch.Tensor, classes: int) -> torch.Tensor:
        """scikit-learn's ``_ovr_decision_function(dec < 0, -dec, n_classes)``: each class's
        pairwise votes plus its summed confidence squashed below one vote."""
        votes = torch.zeros(decision.shape[0], classes, dtype=decision.dtype)
        confidence = torch.zeros_like(votes)
        k = 0
        for i in range(classes):
            for j in range(i + 1, classes):
                d = decision[:, k]
                confidence[:, i] = confidence[:, i] + d
                confidence[:, j] = confidence[:, j] - d
                votes[:, i] = votes[:, i] + (d >= 0).to(votes.dtype)
                votes[:, j] = votes[:, j] + (d < 0).to(votes.dtype)
                k += 1
        return votes + confidence / (3 * (confidence.abs() + 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            return features
        return torch.log(self.probabilities(features).clamp_min(1e-12))
