"""fedsim's Hydra config tree (installed as ``fedsim.conf``): each sub-folder is a config group."""
