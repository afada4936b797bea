"""The per-level summary figure of a denoising run (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path


def plot_levels(stats: list[dict], out: str | Path, title: str = "CION denoising",
                quality: list[dict] | None = None) -> Path:
    """Four panels over the stages (raw, then each level run): identities; images kept /
    reallocated / discarded (stacked); noise n_S (Eq. 3); seconds. With ``quality`` (one
    ``{"precision", "recall"}`` dict per stage, e.g. from
    :func:`cion.denoise.metrics.pairwise_precision_recall` against ground truth) a fifth panel
    shows pairwise precision and recall. Returns the PNG path."""
    from cion.plotting import pyplot, save_figure

    plt = pyplot()

    names = [s["level"] for s in stats]
    x = range(len(names))
    fig, ax = plt.subplots(1, 5 if quality else 4, figsize=(19 if quality else 15, 3.6))
    ax[0].bar(x, [s["identities"] for s in stats], color="#4c72b0")
    ax[0].set_title("identities")
    bottom = [0] * len(stats)
    for key, colour in (("images_kept", "#55a868"), ("images_reallocated", "#dd8452"),
                        ("images_discarded", "#c44e52")):
        vals = [s[key] for s in stats]
        ax[1].bar(x, vals, bottom=bottom, color=colour, label=key.split("_")[1])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax[1].set_title("images")
    ax[1].legend(fontsize=8)
    if all("n_S" in s for s in stats):
        ax[2].plot(list(x), [s["n_S"] for s in stats], "o-", color="#8172b3")
        exact = all(s.get("n_S_exact", True) for s in stats)
        ax[2].set_title("noise n_S (Eq. 3)" + ("" if exact else ", pairs: neighbour search"))
    else:
        ax[2].set_title("noise n_S not computed")
    ax[3].bar(x, [s["seconds"] for s in stats], color="#937860")
    ax[3].set_title("seconds")
    if quality:
        ax[4].plot(list(x), [q["precision"] for q in quality], "o-", label="precision")
        ax[4].plot(list(x), [q["recall"] for q in quality], "s-", label="recall")
        ax[4].set_ylim(0, 1.02)
        ax[4].set_title("pairwise vs ground truth")
        ax[4].legend(fontsize=8)
    for a in ax:
        a.set_xticks(list(x))
        a.set_xticklabels(names)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)
