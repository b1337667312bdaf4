"""Pieces both wings use: user-facing errors, tables/JSON reports, plots, progress bars."""
