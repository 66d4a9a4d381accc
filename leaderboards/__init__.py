"""Grids of model x method x sparsity x dtype cells: run them resumably, render leaderboards and plots."""
