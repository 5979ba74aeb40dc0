"""Adaptive computation: training recipes, exit policies and the early-exit executor."""

from adaptive.recipes import RECIPES, get_recipe

__all__ = ["RECIPES", "get_recipe"]
