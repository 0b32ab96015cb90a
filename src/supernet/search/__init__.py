"""Search over a trained supernet: evaluation (BN recalibration + cached accuracy), evolution, Pareto fronts."""
