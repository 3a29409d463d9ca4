"""Machine learning of hpcem: the 2D class ranker (RELION-4's relion_class_ranker, seed 000
section 3.2).  Inference runs in numpy from a weights file (:mod:`hpcem.ml.net`); training needs
PyTorch (the optional ``[ml]`` extra, imported lazily by :mod:`hpcem.ml.train`)."""
