"""The NAS algorithm: supernet, arch-gradient estimators, losses, derive rule, export, the search loop."""
