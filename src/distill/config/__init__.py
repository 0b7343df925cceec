"""Recipes: YAML -> validated schemas -> objects. ``build.py`` (with ``splits.py`` for the data and
``models.py`` for the models) is the only place that builds objects."""
