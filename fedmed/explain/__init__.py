"""Explanations of a model, drawn at the site from the site's own examples.

One explainer a module (Grad-CAM, mask overlays, ECG saliency, text evidence); the
node-side rule for where the files go and what travels back is :mod:`fedmed.explain.outcome`.
Explainers know models and tensors, never Flower, the node or the task-pack registry.
"""
