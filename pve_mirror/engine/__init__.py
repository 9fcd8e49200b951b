"""Plan, then act: steps, journals, the cluster-wide lock and the bounded executor."""
