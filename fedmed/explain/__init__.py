"""Explanations of a model, drawn at the site from the site's own examples.

The contract is :class:`fedmed.explain.base.Explainer`; one explainer a module (Grad-CAM,
mask overlays, ECG saliency, text evidence, PHI review, SHAP); a task pack declares which one
it uses. The node-side rule for where the files go and what travels back is
:mod:`fedmed.explain.outcome`. Explainers know models, tensors and datasets, never Flower, the
node or the task packs (this package imports nothing from ``fedmed.tasks``).
"""
