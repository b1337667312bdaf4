"""DRAM/flash index structures shared by the Nemo engine and the set-based baselines."""
