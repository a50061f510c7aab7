"""The comparison harness: grids of runs at equal budgets, leaderboards, plots, benchmarks."""
