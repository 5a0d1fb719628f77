"""Studies built on top of federations: local-only and pooled baselines, their recorded
copies, cross-institution generalization (leave-one-site-out) and local fine-tuning.

A study runs federations through :mod:`fedmed.simulation` and trains baselines with the same
local loop the nodes use (:mod:`fedmed.training`), so every regime is compared on one recipe.
"""
