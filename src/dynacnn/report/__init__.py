"""Plots, markdown tables and the demo report."""
