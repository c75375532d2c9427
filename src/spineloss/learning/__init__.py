"""Loss learning: finding a new loss function from data (``spineloss learn genetic|taylor|meta``).

Three searches share one file format, one fitness and one command line:

* :mod:`.genetic`: genetic programming over loss expressions (Gonzalez & Miikkulainen 2020, GLO) with DEAP,
  then CMA-ES on the best tree's constants;
* :mod:`.taylor`: a TaylorGLO-style parametric family (Gonzalez & Miikkulainen 2021) whose coefficients
  CMA-ES searches; it contains CE, Dice, Tversky and their mixtures exactly;
* :mod:`.meta`: an ML3 meta-learned loss network (Bechtle et al. 2021).

Pieces (one purpose each):

    features.py       per-voxel p, g and region soft counts from a checked loss input
    expression.py     formula strings: a safe parser, canonical and readable forms, ExpressionLoss
    taylor.py         the parametric family and TaylorLoss
    meta.py           the loss network, MetaLoss, the functional inner step
    format.py         the learned-loss JSON file: save, load, build_loss("learned:PATH")
    screening.py      cheap rejection of a candidate before any training
    fitness.py        the proxy task and ``evaluate(candidate_spec) -> fitness``
    parallel.py       evaluations through a backend (the local pool of spineloss.backends.local, or Ray)
    protocol.py       an experiment refuses a learned loss chosen on its test cases (same files)
    cmaes.py          seeded, checkpointable CMA-ES (deap.cma)
    search.py         what the searches share: evaluation cache, logs, checkpoint, progress line
    genetic.py        the GP search (deap.gp), then CMA-ES on the best tree's constants
    taylor_search.py  CMA-ES on the family's coefficients
    meta_search.py    ML3 meta-training, then the fitness of the frozen loss
    config.py         the learn config (``[learn]`` and the proxy task's sections)
    runner.py         run a search: resume, outputs
    cli.py            ``spineloss learn``

Nothing here is imported by ``import spineloss``; DEAP is imported only by the searches.
"""

#: the search methods of ``spineloss learn``
METHODS = ("genetic", "taylor", "meta")
