"""Element-wise and column-wise sub-problem solvers shared by every ADMM solver."""
