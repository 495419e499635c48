"""IJB-C-sized 1:1 evaluation on a synthetic layout: time and peak memory of all 8 N/D/F scenarios.

The layout has IJB-C's sizes (469,375 images, 23,124 templates: 3,531 gallery and 19,593 probe templates,
15,658,489 gallery-probe pairs, like the real 1:1 protocol) with random media ids, detector scores and 512-D
float32 embeddings (plus flip embeddings). The vectorised code of IJB_evals.py runs all 8 scenarios; the
original algorithm (a Python loop per template and per media, and pair scoring by gathering feature rows) runs
the default scenario N0D1F1 on a 1/10 layout in the same process, next to the vectorised code on that same
layout, and the ratio of the two times is printed together with the largest score difference.

Usage: `python bench/ijb_scale.py [--scale 1.0] [--threads 2]`; `--scale` shrinks the full layout.
"""

import argparse
import os
import sys
import time

IJBC_SIZES = {"images": 469_375, "gallery": 3_531, "probes": 19_593, "pairs": 15_658_489}


def parse_arguments(argv=None):
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="size of the full layout relative to IJB-C")
    parser.add_argument("--subset", type=float, default=0.1, help="size of the loop-comparison layout")
    parser.add_argument("--dim", type=int, default=512, help="embedding size")
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


ARGS = parse_arguments()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import resource  # noqa: E402

import numpy as np  # noqa: E402

from IJB_evals import PairScorer, TemplateAggregation, scenario_name, scenarios  # noqa: E402


def synthetic_layout(scale, dim, seed):
    """An IJB-C-like layout scaled by `scale`: dict of templates, medias, face_scores, embs, embs_f, p1, p2."""
    rng = np.random.default_rng(seed)
    num_images = int(IJBC_SIZES["images"] * scale)
    num_gallery = max(1, int(IJBC_SIZES["gallery"] * scale))
    num_probes = max(1, int(IJBC_SIZES["probes"] * scale))
    num_templates = num_gallery + num_probes
    template_index = np.concatenate([np.arange(num_templates), rng.integers(0, num_templates,
                                                                            num_images - num_templates)])
    templates = template_index * 3 + 1  # sparse ids, as in the real files
    medias = template_index * 16 + rng.integers(0, 16, num_images)  # up to 16 medias (videos) per template
    density = min(1.0, IJBC_SIZES["pairs"] * scale / (num_gallery * num_probes))
    p1, p2 = [], []
    for start in range(0, num_gallery, 256):
        rows = np.arange(start, min(start + 256, num_gallery))
        picked_rows, picked_columns = np.nonzero(rng.random((len(rows), num_probes), dtype=np.float32) < density)
        p1.append(rows[picked_rows] * 3 + 1)
        p2.append((num_gallery + picked_columns) * 3 + 1)
    return {
        "templates": templates,
        "medias": medias,
        "face_scores": rng.uniform(0.5, 1.0, num_images).astype(np.float32),
        "embs": rng.standard_normal((num_images, dim), dtype=np.float32),
        "embs_f": rng.standard_normal((num_images, dim), dtype=np.float32),
        "p1": np.concatenate(p1),
        "p2": np.concatenate(p2),
    }


def loop_scores_n0d1f1(layout, batch_size=10000):
    """The original algorithm for N0D1F1: per template np.where over all images, per media a mean, the media
    sum normalised; then pair scores by gathering the two feature rows, `batch_size` pairs at a time."""
    features = (layout["embs"] + layout["embs_f"]) * layout["face_scores"][:, None]
    templates, medias = layout["templates"], layout["medias"]
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), features.shape[1]))
    for row, template in enumerate(unique_templates):
        (in_template,) = np.where(templates == template)
        template_medias = medias[in_template]
        media_feats = [features[in_template[template_medias == media]].mean(axis=0)
                       for media in np.unique(template_medias)]
        template_feats[row] = np.sum(media_feats, axis=0)
    template_feats /= np.linalg.norm(template_feats, axis=1, keepdims=True)
    template_row = np.zeros(unique_templates.max() + 1, dtype=np.int64)
    template_row[unique_templates] = np.arange(len(unique_templates))
    p1, p2 = layout["p1"], layout["p2"]
    return np.concatenate([
        np.sum(template_feats[template_row[p1[start:start + batch_size]]]
               * template_feats[template_row[p2[start:start + batch_size]]], axis=-1)
        for start in range(0, len(p1), batch_size)
    ])


def vectorised_scores(layout, flags=None):
    """`({name: scores}, seconds by step)` of the given scenario flags (default all 8) with IJB_evals' code:
    setup (template weights and pair plan), template features of all scenarios in one pass, pair scoring."""
    flags = flags or scenarios()
    seconds, cpu = {}, {}
    start, cpu_start = time.perf_counter(), time.process_time()
    aggregation = TemplateAggregation(layout["templates"], layout["medias"])
    scorer = PairScorer(aggregation.unique_templates, layout["p1"], layout["p2"])
    seconds["setup"], cpu["setup"] = time.perf_counter() - start, time.process_time() - cpu_start
    start, cpu_start = time.perf_counter(), time.process_time()
    features = aggregation.features(layout["embs"], layout["embs_f"], layout["face_scores"], flags)
    seconds["template features"] = time.perf_counter() - start
    cpu["template features"] = time.process_time() - cpu_start
    start, cpu_start = time.perf_counter(), time.process_time()
    results = {scenario_name(*flag): scorer.scores(features.pop(0)) for flag in flags}
    seconds["pair scores"], cpu["pair scores"] = time.perf_counter() - start, time.process_time() - cpu_start
    return results, seconds, cpu


def peak_rss_gb():
    """Peak resident memory of this process so far, GB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def describe(layout):
    """One line with the layout's sizes."""
    return (f"{len(layout['templates']):,} images, {len(np.unique(layout['templates'])):,} templates, "
            f"{len(layout['p1']):,} pairs, {layout['embs'].shape[1]}-D")


def main():
    """Run the subset comparison, then the full layout, and print the figures."""
    print(f">>>> threads: {ARGS.threads}")
    subset = synthetic_layout(ARGS.subset * ARGS.scale, ARGS.dim, ARGS.seed + 1)
    print(f">>>> subset layout ({ARGS.subset * ARGS.scale:g} of IJB-C): {describe(subset)}")
    start = time.perf_counter()
    loop = loop_scores_n0d1f1(subset)
    loop_time = time.perf_counter() - start
    fast, fast_seconds, _ = vectorised_scores(subset, [(False, True, True)])
    fast_time = sum(fast_seconds.values())
    print(f"original loop algorithm, N0D1F1 on the subset: {loop_time:.2f} s")
    print(f"vectorised, N0D1F1 on the subset (setup included): {fast_time:.2f} s")
    print(f"speed-up on the subset: {loop_time / fast_time:.1f}x; "
          f"max |score difference|: {np.abs(loop - fast['N0D1F1']).max():.2e}")
    del subset, loop, fast

    full = synthetic_layout(ARGS.scale, ARGS.dim, ARGS.seed)
    print(f">>>> full layout ({ARGS.scale:g} of IJB-C): {describe(full)}")
    _, seconds, cpu = vectorised_scores(full)
    print("wall: " + ", ".join(f"{step} {value:.2f} s" for step, value in seconds.items()))
    print("CPU (all threads): " + ", ".join(f"{step} {value:.2f} s" for step, value in cpu.items()))
    print(f"all 8 scenarios, setup included: {sum(seconds.values()):.2f} s wall, {sum(cpu.values()):.2f} s CPU "
          "(target < 60 s wall)")
    print(f"peak memory (RSS, whole run incl. embeddings): {peak_rss_gb():.2f} GB (target < 6 GB)")


if __name__ == "__main__":
    main()
