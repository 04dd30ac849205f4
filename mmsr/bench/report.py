"""The bench's report: performance targets, the paper's reference times, the text report and the plot."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..presets import get_preset

# The paper's reported seconds per image (MMSR on a TPU, the others on a GPU), compared with this run at 512 px.
PAPER_SECONDS = (("MMSR", 6.06, "tpu"), ("PASD", 5.60, "cuda"), ("SUPIR", 18.01, "cuda"), ("SeeSR", 30.86, "cuda"))


@dataclass(frozen=True)
class Target:
    """A performance target; it applies only to a run of this preset, device kind, size and steps."""

    key: str
    what: str
    value: float
    unit: str
    preset: str
    device: str
    size: int
    field: str = "e2e"
    steps: int | None = None  # None: the preset's default


# key, what, target, unit, preset, device kind, output size, measured field, steps
TARGETS = tuple(
    Target(*row)
    for row in (
        ("full_512_e2e", "full, 512 px, 50 steps, all extractors (H100/H200)", 1.5, "s", "full", "cuda", 512, "e2e", 50),
        ("full_1024_e2e", "full, 1024 px, 50 steps, all extractors (H100/H200)", 4.0, "s", "full", "cuda", 1024, "e2e", 50),
        ("full_512_peak_gpu", "full, 512 px, peak GPU memory", 10.0, "GB", "full", "cuda", 512, "peak_gpu_gb", 50),
        ("lite_cpu_512_e2e", "lite, 128 -> 512 px, offline extractors (2-core CPU)", 15.0, "s", "lite", "cpu", 512,
         "e2e_offline", None),
    )
)  # fmt: skip


# -- targets and the paper's reference times -----------------------------------------------------


def _measured(result: dict, field: str) -> float | None:
    if field == "peak_gpu_gb":
        mb = result["peak_memory"].get("gpu_allocated_peak_mb")
        return None if mb is None else mb / 1024
    return result["e2e"]["median"] if field == "e2e" else result[field]


def _mismatch(meta: dict, target: Target, result: dict | None) -> list[str]:
    """Why this run is not comparable with ``target`` (empty when it is)."""
    steps = target.steps or get_preset(target.preset).default_steps
    why = [
        f"preset is {meta['preset']}" if meta["preset"] != target.preset else "",
        f"device is {meta['device_kind']}, target is for {target.device}"
        if meta["device_kind"] != target.device
        else "",
        f"steps are {meta['steps']}, target is for {steps}" if meta["steps"] != steps else "",
        f"size {target.size} not measured" if result is None else "",
    ]
    return [w for w in why if w]


def check_targets(meta: dict, results: list[dict]) -> list[dict]:
    """Each target with the measured value and ``ratio = measured / target`` where this run matches it."""
    out = []
    for target in TARGETS:
        row = {**asdict(target), "measured": None, "ratio": None, "met": None}
        result = next((r for r in results if r["size"] == target.size), None)
        mismatch = _mismatch(meta, target, result)
        if mismatch:
            row["note"] = "not comparable: " + "; ".join(mismatch)
        else:
            value = _measured(result, target.field)
            row["measured"] = None if value is None else round(value, 4)
            row["ratio"] = None if value is None else round(value / target.value, 3)
            row["met"] = None if value is None else value <= target.value
            row["note"] = "ratio = measured / target (<= 1 meets it)"
        out.append(row)
    return out


def paper_reference(meta: dict, results: list[dict]) -> list[dict]:
    """The paper's seconds per image next to a ``full`` 512 px end to end, compared only on the same device kind."""
    ours = next((r["e2e"]["median"] for r in results if r["size"] == 512), None) if meta["preset"] == "full" else None
    rows = []
    for method, seconds, kind in PAPER_SECONDS:
        row = {"method": method, "paper_seconds": seconds, "paper_device": kind.replace("cuda", "GPU").upper()}
        if ours is not None and kind == meta["device_kind"]:
            row["ratio"] = round(ours / seconds, 3)
            row["note"] = "this run's 512 px e2e / paper (a GPU of the paper's choice; not necessarily this card)"
        else:
            row["ratio"] = None
            why = "no full-preset 512 px run" if ours is None else f"paper ran on a {row['paper_device']}"
            row["note"] = f"not comparable: {why}; this run: {meta['preset']} on {meta['device_kind']}"
        rows.append(row)
    return rows


# -- output --------------------------------------------------------------------------------------

STAGE_ORDER = (
    "extract_caption", "extract_depth", "extract_seg", "extract_edges", "text_encoder", "tokenizer", "connector",
    "stage1", "vae_encode", "unet", "unet_step", "vae_decode", "pipeline", "e2e_offline", "e2e",
)  # fmt: skip
STAGE_LABELS = {
    "stage1": "stage 1 (Real-ESRGAN x4plus)",
    "unet": "UNet, all steps",
    "unet_step": "UNet step (mean)",
    "pipeline": "pipeline total",
    "e2e_offline": "end to end, offline extractors",
    "e2e": "end to end, all extractors",
}


def _format_size(r: dict, info: dict) -> list[str]:
    tiling = f"latent tiles {r['latent_tile']}" if r["latent_tile"] else "untiled"
    lines = [
        f"\n{r['size']} px (LR {r['lr_size']}, latent {r['latent'][0]}x{r['latent'][1]}, {tiling}, "
        f"VAE {'tiled' if r['vae_tiling'] else 'untiled'})",
        f"  {'stage':34s} {'median s':>10s}",
    ]
    for key in STAGE_ORDER:
        if key not in r["stages"]:
            continue
        name = key.removeprefix("extract_")
        note = f"  ({info[name]['weights']} weights)" if key.startswith("extract_") else ""
        lines.append(f"  {STAGE_LABELS.get(key, key):34s} {r['stages'][key]:10.4f}{note}")
    s = r["unet_step"]
    lines.append(f"  UNet step median / min / max: {s['median']:.4f} / {s['min']:.4f} / {s['max']:.4f} s")
    lines.append(f"  e2e runs: {', '.join(f'{x:.3f}' for x in r['e2e']['runs'])} s")
    mem = r["peak_memory"]
    gpu = f"GPU allocated {mem['gpu_allocated_peak_mb']:.0f} MB" if "gpu_allocated_peak_mb" in mem else "GPU n/a"
    lines.append(f"  peak memory: {gpu}; CPU RSS {mem['cpu_rss_peak_mb']:.0f} MB (process peak so far)")
    metrics = [f"{k} {v['seconds']:.3f} s" for k, v in r["metrics"].items() if v["available"]]
    missing = [k for k, v in r["metrics"].items() if not v["available"]]
    lines.append(f"  metrics: {', '.join(metrics) or 'none'}; unavailable: {', '.join(missing) or 'none'}")
    return lines


def _format_scaling(sc: dict) -> list[str]:
    lines = [
        f"\ncost against output size (projected e2e = fixed {sc['fixed_seconds']:.3f} s + {sc['steps']} steps + VAE)"
    ]
    lines.append(f"  {'size':>6s} {'tile':>6s} {'UNet step':>10s} {'VAE enc':>9s} {'VAE dec':>9s} {'projected':>10s}")
    for r in sc["sizes"]:
        tile = str(r["latent_tile"] or "-")
        lines.append(
            f"  {r['size']:6d} {tile:>6s} {r['unet_step']:10.4f} {r['vae_encode']:9.4f} "
            f"{r['vae_decode']:9.4f} {r['projected_e2e']:10.3f}"
        )
    t = sc["tokens"]
    lines.append(
        f"UNet step at {t['size']} px: {t['connector_tokens']} connector tokens {t['unet_step_connector']:.4f} s vs "
        f"{t['full_sequence_tokens']}-token sequence {t['unet_step_full_sequence']:.4f} s "
        f"(x{t['unet_step_full_sequence'] / t['unet_step_connector']:.2f} without the connector)"
    )
    lines.append("connector time against sequence length M: " + ", ".join(
        f"{c['tokens']}: {c['seconds'] * 1000:.2f} ms" for c in sc["connector"]))  # fmt: skip
    return lines


def _format_header(report: dict) -> list[str]:
    m = report["meta"]
    weights = "random weights" if m["random_weights"] or m["preset"] == "tiny-random" else "trained weights"
    return [
        f"MMSR bench: preset {m['preset']} ({weights}), {m['device']} [{m['device_name']}], {m['dtype']}, "
        f"torch {m['torch']}, {m['torch_threads']} threads / {m['cpu_count']} CPUs, load {m['load_average']}",
        f"{m['steps']} steps, {m['cfg_mode']}, guidance {m['guidance']}, warm-up {m['warmup']}, "
        f"median of {m['runs']} runs, compile {'on' if m['compile'] else 'off'}",
        "extractors: " + "; ".join(
            f"{k} {v['model'] + ' (' + v['weights'] + ' weights)' if v['weights'] else 'unavailable: ' + v['unavailable']}"
            for k, v in report["extractors"].items()
        ),
    ]  # fmt: skip


def _format_rerun(rr: dict) -> list[str]:
    lines = [f"\nEngine at {rr['size']} px (extractor and token caches):"]
    for label, v in rr.items():
        if label != "size":
            lines.append(
                f"  {label:20s} {v['seconds']:8.3f} s  (diffusion {v['diffusion_seconds']:.3f} s, "
                f"extractors run {v['extractors_run']}, cache hits {v['extractor_cache_hits']})"
            )
    return lines


def _format_targets(report: dict) -> list[str]:
    lines = ["\ntargets (ratio = measured / target; <= 1 meets it):"]
    for t in report["targets"]:
        measured = "-" if t["measured"] is None else f"{t['measured']:.3f} {t['unit']}"
        ratio = "-" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(f"  {t['what']:58s} {t['value']:6.1f} {t['unit']:2s} {measured:>12s} {ratio:>6s}  {t['note']}")
    lines.append("paper's reported times (per image):")
    for p in report["paper_reference"]:
        ratio = "" if p["ratio"] is None else f" ratio {p['ratio']:.2f}"
        lines.append(f"  {p['method']:6s} {p['paper_seconds']:6.2f} s ({p['paper_device']}){ratio}  {p['note']}")
    return lines


def format_report(report: dict) -> str:
    """The report as text: the run, each size's stages, the engine re-run, scaling, targets."""
    lines = _format_header(report)
    for r in report["results"]:
        lines += _format_size(r, report["extractors"])
    if report["engine_rerun"]:
        lines += _format_rerun(report["engine_rerun"])
    if report["scaling"]:
        lines += _format_scaling(report["scaling"])
    return "\n".join(lines + _format_targets(report))


def plot_scaling(scaling: dict, path: str) -> None:
    """Three panels: latency against output size, UNet step against condition length, connector against M."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    sizes = [r["size"] for r in scaling["sizes"]]
    for key, label in (
        ("projected_e2e", "projected end to end"),
        ("unet_step", "one UNet step"),
        ("vae_decode", "VAE decode"),
    ):
        a.plot(sizes, [r[key] for r in scaling["sizes"]], marker="o", label=label)
    a.set(xscale="log", yscale="log", xlabel="output side (px)", ylabel="seconds", title="cost against output size")
    a.set_xticks(sizes, [str(s) for s in sizes])
    a.minorticks_off()
    a.legend()
    t = scaling["tokens"]
    labels = [f"{t['connector_tokens']} (connector)", f"{t['full_sequence_tokens']} (no connector)"]
    b.bar(labels, [t["unet_step_connector"], t["unet_step_full_sequence"]], color=["tab:green", "tab:red"])
    b.set(ylabel="seconds", title=f"UNet step at {t['size']} px against condition tokens")
    lengths = [r["tokens"] for r in scaling["connector"]]
    c.plot(lengths, [r["seconds"] * 1000 for r in scaling["connector"]], marker="o")
    c.set(xlabel="condition sequence length M", ylabel="ms", title="connector time against M (O(M N))")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
