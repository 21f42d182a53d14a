"""Learning-rate sweeps on Ray Tune with MLflow tracking.

``load_space`` reads and validates a search-space YAML file; ``resolve_space`` applies the sweep command's
options to it, giving the frozen space a sitting runs; ``run_sweep`` runs that on an embedded local
Ray or an existing cluster, logging every trial to MLflow. Ray, MLflow and Optuna are imported only
when a sweep runs, so validating a file needs neither.
"""

from rmask_tune.sweep.runner import run_sweep
from rmask_tune.sweep.plan import SweepSpace
from rmask_tune.sweep.resolve import SweepOptions, resolve_space
from rmask_tune.sweep.validate import load_space

__all__ = ["SweepOptions", "SweepSpace", "load_space", "resolve_space", "run_sweep"]
