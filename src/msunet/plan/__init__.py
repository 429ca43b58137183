"""Planning: what a dataset folder says (`survey`) and every config value the user did not set,
derived from it and from device measurements with its source and reason (`planner`). No keras:
the measurements are made by `msunet.training.probe` and handed in.
"""
