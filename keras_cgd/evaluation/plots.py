"""Pictures of retrieval results: neighbour grids, Recall@K curves, projector export.

Plots use matplotlib's Agg backend (no display needed); the projector export
writes the files TensorBoard's Embedding Projector reads (no TensorFlow needed).
"""

import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _to_uint8(image):
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return image


def plot_retrieval_grid(
    query_images,
    query_labels,
    gallery_images,
    gallery_labels,
    neighbor_indices,
    path,
    k=None,
    image_px=96,
):
    """Saves a PNG grid: each row a query followed by its top-k results.

    Correct results (same label as the query) get a green border, wrong ones
    red; the query has a blue border.

    Args:
        query_images: sequence of `(H, W, 3)` images in [0, 255].
        query_labels: `(Q,)`.
        gallery_images: sequence indexable by gallery index.
        gallery_labels: `(N,)`.
        neighbor_indices: `(Q, >=k)` gallery indices, best first (e.g. from
            `topk_neighbors` or `ExactIndex.search`).
        path: output PNG path.
        k: results shown per query (default: all columns).
        image_px: size of one cell in pixels.

    Returns:
        `path`.

    Reference: leftthomas/CGD `test.py` draws the same green/red borders.
    """
    plt = _pyplot()
    neighbor_indices = np.asarray(neighbor_indices)
    if neighbor_indices.ndim != 2 or neighbor_indices.shape[0] != len(query_images):
        raise ValueError(
            "Invalid value received for argument `neighbor_indices`. Expected "
            f"shape ({len(query_images)}, k). Received: {neighbor_indices.shape}"
        )
    k = neighbor_indices.shape[1] if k is None else int(k)
    if not 1 <= k <= neighbor_indices.shape[1]:
        raise ValueError(
            f"Invalid value received for argument `k`. Expected 1 <= k <= "
            f"{neighbor_indices.shape[1]}. Received: k={k}"
        )
    rows = len(query_images)
    dpi = 100
    fig, axes = plt.subplots(
        rows, k + 1, figsize=((k + 1) * image_px / dpi, rows * (image_px + 16) / dpi), dpi=dpi, squeeze=False
    )
    for r in range(rows):
        cells = [(query_images[r], "tab:blue", "query")]
        for c in range(k):
            g = int(neighbor_indices[r, c])
            ok = gallery_labels[g] == query_labels[r]
            cells.append((gallery_images[g], "green" if ok else "red", f"{c + 1}"))
        for ax, (image, color, title) in zip(axes[r], cells):
            ax.imshow(_to_uint8(image))
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(4)
            ax.set_title(title, fontsize=7)
    fig.tight_layout(pad=0.3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_recall_curve(recalls, path, title="Recall@K"):
    """Saves a Recall@K curve (log-scaled K) as PNG.

    Args:
        recalls: `{k: recall}` (as returned by `recall_at_k`) or
            `{curve_name: {k: recall}}` for several curves.
        path: output PNG path.
        title: plot title.

    Returns:
        `path`.
    """
    plt = _pyplot()
    if not recalls:
        raise ValueError("Invalid value received for argument `recalls`. Expected a non-empty dict.")
    if not isinstance(next(iter(recalls.values())), dict):
        recalls = {"": recalls}
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    for name, curve in recalls.items():
        ks = sorted(curve)
        ax.plot(ks, [100 * curve[k] for k in ks], marker="o", label=name or None)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(recalls):
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _tsv_cell(value):
    text = str(value)
    return text.replace("\t", " ").replace("\n", " ")


def export_embedding_projector(
    log_dir, embeddings, labels=None, images=None, metadata=None, thumbnail_px=32, tensor_name="embedding"
):
    """Writes embeddings for TensorBoard's Embedding Projector.

    Files in `log_dir`: `tensors.tsv` (one embedding per line),
    `metadata.tsv` (labels and/or metadata columns), `sprite.png` (thumbnails
    in a square grid, at most 8192 x 8192 px) and `projector_config.pbtxt`.
    Open with `tensorboard --logdir LOG_DIR`, "Projector" tab.

    Args:
        log_dir: output directory (created).
        embeddings: `(N, D)`.
        labels: optional `(N,)` labels (column `label`).
        images: optional `(N, H, W, 3)` images in [0, 255] for the sprite.
        metadata: optional dict `{column_name: (N,) values}`.
        thumbnail_px: sprite cell size (reduced if needed to fit 8192 px).
        tensor_name: name shown in the projector.

    Returns:
        path of `projector_config.pbtxt`.
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"Expected embeddings of shape (N, D). Received: {embeddings.shape}")
    n = embeddings.shape[0]
    columns = {}
    if labels is not None:
        columns["label"] = list(np.asarray(labels).tolist())
    for name, values in (metadata or {}).items():
        columns[name] = list(np.asarray(values).tolist())
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(
                f"Metadata column {name!r} has {len(values)} values; expected {n} (one per embedding)."
            )
    os.makedirs(log_dir, exist_ok=True)
    np.savetxt(os.path.join(log_dir, "tensors.tsv"), embeddings, delimiter="\t", fmt="%.6g")
    lines = [f'embeddings {{\n  tensor_name: "{tensor_name}"\n  tensor_path: "tensors.tsv"\n']
    if columns:
        with open(os.path.join(log_dir, "metadata.tsv"), "w", encoding="utf-8") as f:
            names = list(columns)
            if len(names) > 1:  # a header row only with several columns
                f.write("\t".join(names) + "\n")
            for i in range(n):
                f.write("\t".join(_tsv_cell(columns[c][i]) for c in names) + "\n")
        lines.append('  metadata_path: "metadata.tsv"\n')
    if images is not None:
        from PIL import Image

        if len(images) != n:
            raise ValueError(f"Expected one image per embedding ({n}). Received: {len(images)} images")
        grid = int(np.ceil(np.sqrt(n)))
        px = max(1, min(int(thumbnail_px), 8192 // max(grid, 1)))
        sprite = Image.new("RGB", (grid * px, grid * px))
        for i, image in enumerate(images):
            thumb = Image.fromarray(_to_uint8(image)).resize((px, px), Image.BILINEAR)
            sprite.paste(thumb, ((i % grid) * px, (i // grid) * px))
        sprite.save(os.path.join(log_dir, "sprite.png"))
        lines.append(f'  sprite {{\n    image_path: "sprite.png"\n    single_image_dim: {px}\n    single_image_dim: {px}\n  }}\n')
    lines.append("}\n")
    config = os.path.join(log_dir, "projector_config.pbtxt")
    with open(config, "w", encoding="utf-8") as f:
        f.write("".join(lines))
    return config
