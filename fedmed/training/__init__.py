"""Local training at a site: the loop every pack trains with (:mod:`fedmed.training.loop`)
and the normalisation layers a site keeps for itself (:mod:`fedmed.training.local_norms`).
"""
