"""Recipes: YAML -> validated schemas -> objects. ``build.py`` is the only place that builds objects."""
