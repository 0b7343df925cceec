"""Parts of ``benchmarks/kd_recipes.py``: one module per part, each with ``run(args) -> dict``.

``python benchmarks/kd_recipes.py --part NAME`` imports ``kd_parts.NAME``, calls ``run(args)`` and writes the
dict to ``docs/benchmarks/kd_recipes/NAME.json``; a part may also define ``render(result) -> str`` (its
Markdown section) and ``add_arguments(parser)`` (its own options). The script then merges every part file
into ``docs/benchmarks/kd_recipes.json`` and renders ``docs/benchmarks/kd_recipes.md``.
"""
