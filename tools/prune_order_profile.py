"""Which channels the greedy CW-NNK order keeps longest, in a finished run's channels.csv.

    python tools/prune_order_profile.py results/tables/channels.csv

Over the live channels of the final models (neither saved epochs nor untrained twins), per
(model, layer): the Spearman correlation of `prune_order` (0 removed first) with the share of
all-zero maps and with the channel's LOO error, and those two means over the quarter of channels
removed first and the quarter kept longest. docs/overlap.md ("Pruning") quotes its output.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from cwnnk.tables import read_table, text_column  # noqa: E402


def profile(channels):
    kind = text_column(channels["kind"])
    keep = ~np.isin(kind, ("snapshot", "untrained")) & (channels["dead"] == 0)
    models, layers = text_column(channels["model"]), text_column(channels["layer"])
    rows = []
    for model in dict.fromkeys(models[keep]):
        for layer in dict.fromkeys(layers[keep & (models == model)]):
            at = keep & (models == model) & (layers == layer)
            if at.sum() < 4:
                continue
            order = np.argsort(channels["prune_order"][at])
            quarter = at.sum() // 4
            row = dict(model=model, layer=layer)
            for name in ("zero_map_fraction", "loo_error"):
                values = channels[name][at]
                row[f"rho_{name}"] = (stats.spearmanr(channels["prune_order"][at], values)[0] if np.ptp(values)
                                      else np.nan)
                row[f"first_{name}"] = values[order[:quarter]].mean()
                row[f"last_{name}"] = values[order[-quarter:]].mean()
            rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("channels", help="a finished run's channels.csv")
    args = parser.parse_args(argv)
    rows = profile(read_table(args.channels))
    print(f"{len(rows)} (model, layer) pairs of final models, live channels")
    for name in ("zero_map_fraction", "loo_error"):
        rho = np.array([r[f"rho_{name}"] for r in rows])
        print(f"{name}: Spearman with prune_order median {np.nanmedian(rho):+.2f} (positive in "
              f"{int(np.sum(rho > 0))} of {int(np.isfinite(rho).sum())}); mean over the quarter removed first "
              f"{np.mean([r[f'first_{name}'] for r in rows]):.3f}, over the quarter kept longest "
              f"{np.mean([r[f'last_{name}'] for r in rows]):.3f}")


if __name__ == "__main__":
    main()
