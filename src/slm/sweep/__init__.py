"""Many training runs of one recipe as independent jobs: `slm sweep` (grids and random draws of fields) and
the mixture search's proxies (`slm mix`) both train through `sweep.runs`."""
