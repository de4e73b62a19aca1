"""The workflow's final products, named once: the tables of results/tables/ and figures F0-F8.

The Snakefile's targets, the tables and figures stages and the report take their names from here.
"""

# {name}.csv, by the stage that writes it: tables (the first three), solvers, manifolds,
# generalization (C4 across models and early stopping, from overlap.csv and channels.csv), pruning (each
# model's accuracy as channels are removed, cwnnk.pruning) and claims
# (each claim's verdict, from overlap, manifolds, generalization and early_stopping; with it answer.csv, the
# headline per model and layer, cwnnk.answer).
TABLES = ("overlap", "channels", "pairwise", "solvers", "manifolds", "generalization", "early_stopping",
          "early_stopping_channels", "pruning", "claims", "answer")

# {name}.pdf and {name}.png: what each figure shows (docs/method.md section 5).
FIGURES = {
    "F0": "the answer: headline redundancy per layer and model, with its interval, chance level and untrained twin",
    "F1": "NNK degree per layer",
    "F2": "redundancy and pairwise overlap versus depth",
    "F3": "last-layer overlap versus generalization",
    "F4": "pairwise channel-overlap heatmaps",
    "F5": "NNK degree versus intrinsic dimension on synthetic manifolds",
    "F6": "exact versus pynnk solver degree",
    "F7": "test error, LOO error and last-layer redundancy over epochs, per run",
    "F8": "test accuracy against the share of channels pruned, per criterion",
}
FIGURE_FORMATS = ("pdf", "png")
