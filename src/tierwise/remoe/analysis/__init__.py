"""Routing metrics, expert-cache simulation and held-out evaluation."""
