"""Evaluation from scores and labels: rank-k accuracy, the deck's reports and figures, comparison tables.

It takes plain arrays (logits or probabilities, integer labels, uint8 images) and file paths, and knows
nothing about models, data pipelines or training, so the same code serves `--mode=evaluate`, the per-epoch
checkpoint table and ablation comparisons. It imports nothing else from cnn_flax except `errors`.
"""

from cnn_flax.evaluation.classification import (
    classification_report_text,
    plot_confusion_matrix,
    plot_predictions,
    write_evaluation,
)
from cnn_flax.evaluation.curves import (
    comparison_table,
    epoch_table,
    history_title,
    plot_comparison,
    plot_history,
)
from cnn_flax.evaluation.metrics import in_top_k, rank_accuracies, rank_k_accuracy

__all__ = [
    "classification_report_text",
    "comparison_table",
    "epoch_table",
    "history_title",
    "in_top_k",
    "plot_comparison",
    "plot_confusion_matrix",
    "plot_history",
    "plot_predictions",
    "rank_accuracies",
    "rank_k_accuracy",
    "write_evaluation",
]
