"""What a run folder holds for people to read: ``curves.png`` (training curves), ``MODEL_CARD.md`` and,
after ``distill eval``, ``confusion.png`` with ``eval.json``.

Below :mod:`distill.api` (which writes them when a run finishes or is evaluated) and above
:mod:`distill.config`; :mod:`distill.report` (``distill compare``'s reports) reads them back."""

from distill.runreport.card import add_compare_rows, data_facts, model_card, write_model_card
from distill.runreport.confusion import per_class_accuracy, plot_confusion, write_eval
from distill.runreport.curves import plot_curves, read_metrics

CURVES = "curves.png"
MODEL_CARD = "MODEL_CARD.md"

__all__ = [
    "CURVES",
    "MODEL_CARD",
    "add_compare_rows",
    "data_facts",
    "model_card",
    "per_class_accuracy",
    "plot_confusion",
    "plot_curves",
    "read_metrics",
    "write_eval",
    "write_model_card",
]
