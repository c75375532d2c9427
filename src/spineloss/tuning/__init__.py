"""Changing a loss while training: adaptive weights of compound losses (:mod:`.weighting`: Rebalance,
SoftAdapt, coefficient of variation) and a greedy search over a loss's tunable parameters driven by a
decision metric (:mod:`.greedy`)."""
