"""Plots, tables and Markdown reports."""
