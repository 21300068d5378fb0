#!/usr/bin/env python
"""Write the book's results page from the benchmarks' JSON files.

    python scripts/render_results.py        # reads benchmarks/results/*.json

writes ``book/results.md`` (tables, the machine and date of every measurement, the commands that
reproduce it) and its figures under ``book/_static/results/``. Run it after any benchmark and commit
the three together; the page is generated, so edit this script, not the page. A benchmark whose file
is absent gets the command that makes it instead of a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURES = "_static/results"  # relative to the page's folder


# ------------------------------------------------------------------------------------------ helpers
def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def num(x, digits: int = 2, scale: float = 1.0) -> str:
    return "–" if x is None else f"{x * scale:,.{digits}f}"


def machine_line(m: dict | None) -> str:
    """One line naming the machine, torch and date of a measurement (``pipelines.machine.machine_info``'s keys)."""
    if not m:
        return "machine not recorded"
    device = m.get("device_name") or m.get("cpu")
    if not device:  # files written before machine_info named the CPU still record the platform
        device = f"{m['platform']} (CPU model not recorded)" if m.get("platform") else "CPU model not recorded"
    parts = [f"{m.get('device', 'cpu')}: {device}"]
    threads = m.get("cpu_threads")
    if threads is not None:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    if m.get("cpu_count"):
        parts.append(f"{m['cpu_count']} cores")
    load = m.get("load_average")
    if load:
        parts.append(f"load average {load[0]:.1f}")
    parts.append(f"torch {m.get('torch', '?')}")
    if m.get("date"):
        parts.append(m["date"][:16].replace("T", " ") + " UTC")
    return ", ".join(parts)


def sentence(text: str) -> str:
    """``text`` ending in a full stop (notes in result files are free text, some without one)."""
    text = text.strip()
    return text if not text or text[-1] in ".!?" else text + "."


def not_run(command: str) -> str:
    return f"Not measured yet. Run\n\n```bash\n{command}\n```\n\nthen `python scripts/render_results.py`.\n"


class Page:
    def __init__(self, results: Path, out_dir: Path, checkpoints: Path = ROOT / "checkpoints"):
        self.results, self.out_dir, self.checkpoints = results, out_dir, checkpoints
        self.figures = out_dir / FIGURES
        self.sections: list[str] = []

    def load(self, name: str) -> dict | None:
        path = self.results / name
        return json.loads(path.read_text()) if path.is_file() else None

    def figure(self, fig, name: str, caption: str) -> str:
        import matplotlib.pyplot as plt

        self.figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.figures / name, dpi=90, bbox_inches="tight", metadata={"Software": None})
        plt.close(fig)
        return f"```{{figure}} {FIGURES}/{name}\n:width: 90%\n\n{caption}\n```\n"


# ------------------------------------------------------------------------------------------ sections
def efficiency(page: Page) -> str:
    out = ["## Fast sampling: model calls, time, memory and quality\n",
           ("One trained model, DDPM with all T steps against DDIM and DPM-Solver++(2M) with fewer model "
            "calls ([chapter 10](../notebooks/10_fast_sampling.ipynb)).\n")]
    data = page.load("efficiency.json")
    if not data or not (data.get("timing", {}).get("arms") or data.get("quality", {}).get("arms")):
        return "\n".join(out) + "\n" + not_run("python benchmarks/efficiency.py --pretrained fashion_ddpm_linear")
    model = data.get("model", {})
    out.append(f"Model: `{model.get('checkpoint')}` ({model.get('parameters', 0):,} parameters, "
               f"{model.get('schedule')} schedule, T = {model.get('num_timesteps')}, "
               f"step {model.get('step')}, sha256 `{str(model.get('sha256'))[:12]}`).\n")
    timing, quality = data.get("timing", {}).get("arms", {}), data.get("quality", {}).get("arms", {})
    arms = list(dict.fromkeys([*timing, *quality]))
    arms.sort(key=lambda a: -(timing.get(a) or quality.get(a))["nfe"])
    rows = []
    for a in arms:
        t, q = timing.get(a), quality.get(a) or {}
        base = t and (t["baseline"].get("cuda_allocated_mib") or t["baseline"].get("rss_mib"))
        peak = t and (t["peak"].get("cuda_max_allocated_mib") or t["peak"].get("rss_mib"))
        kid, fid = q.get("kid"), q.get("fid")
        rows.append([a, (t or q)["nfe"], t and t["model_calls"], num(t and t["seconds_per_image"], 3),
                     num(t and t["ms_per_model_call"], 1), num(peak, 0), num(base, 0),
                     f"{num(kid['value'], 2, 1000)} ± {num(kid['std'], 2, 1000)}" if kid else "–",
                     num(fid and fid["value"], 2)])
    mem = "CUDA max allocated" if any("cuda_max_allocated_mib" in t["peak"] for t in timing.values()) else "peak RSS"
    kid_label = next((f"KID-{q['kid']['n']} ×1000" for q in quality.values() if q.get("kid")), "KID ×1000")
    fid_label = next((q["fid"]["label"] for q in quality.values() if q.get("fid")), "FID")
    batch = next((t["batch"] for t in timing.values()), "?")
    out.append(table(["arm", "NFE", "model calls (counted)", f"s / image (batch {batch})", "ms / call",
                      f"{mem} (MiB)", "baseline (MiB)", kid_label, fid_label], rows))
    ref = data.get("quality", {}).get("reference", {})
    out.append(f"\nMemory: the peak of a fresh process per arm; baseline: the same process after loading the "
               f"model, before any forward pass. Quality against {ref.get('dataset')} {ref.get('split')} "
               f"({ref.get('kid_n')} images for KID, {ref.get('fid_n')} for FID statistics), extractor "
               f"`{ref.get('extractor')}`; KID on every arm's first samples, FID where enough samples were drawn.\n")
    claims = data.get("timing", {}).get("claims")
    if claims:
        change = claims["peak_memory_change"]
        ddim = claims.get("ddim_arm", "DDIM-250")
        measure = {"rss_mib": "peak resident set of the process", "cuda_max_allocated_mib":
                   "torch.cuda.max_memory_allocated"}.get(claims["memory_measure"], claims["memory_measure"])
        out.append(f"**The source report's claims.** DDPM makes {claims['model_call_ratio']:.1f}× as many model calls "
                   f"as {ddim} and took {claims['wall_time_ratio']:.2f}× the wall time ({claims['cpu_time_ratio']:.2f}× "
                   f"the CPU time): \"DDIM-250 is 4× faster than DDPM-1000\" is the ratio of model calls. Peak memory "
                   f"({measure}) at batch {claims['batch']}: {claims['peak_memory_mib']['ddpm']:,.0f} MiB "
                   f"(DDPM) and {claims['peak_memory_mib']['ddim']:,.0f} MiB ({ddim}), a change of {100 * change:+.1f} %"
                   + (f" ({claims['peak_above_baseline_mib']['ddpm']:,.1f} and {claims['peak_above_baseline_mib']['ddim']:,.1f}"
                      " MiB above the baseline of the loaded model)" if claims.get("peak_above_baseline_mib") else "")
                   + (", not the ~30 % saving the report claims: both samplers hold the same tensors (x_t, one "
                      "prediction, the network's activations for one call)." if abs(change) < 0.1 else ".")
                   + (" On a CPU the resident set also counts memory the allocator keeps after freeing it, which "
                      "can differ between runs of different lengths; on a GPU `max_memory_allocated` counts live tensors only."
                      if claims["memory_measure"] == "rss_mib" else "") + "\n")
    out.append("Measured on: " + machines_line([v.get("machine") for v in [*timing.values(), *quality.values()]])
               + ".\n")
    drawn = sorted({q["sampled_on"] for q in quality.values() if q.get("sampled_on")})
    if drawn:
        out.append(f"Quality samples drawn on: {', '.join(drawn)} (scored where the Inception weights are).\n")
    out.append(page_figure_efficiency(page, timing, quality))
    out.append("Commands: " + ", ".join(f"`{c}`" for c in dict.fromkeys(data.get("commands", []))) + ".\n")
    return "\n".join(out)


def log_ticks(ax, xticks, y: bool = False) -> None:
    """Log x axis (and y) with plain-number labels at the given ticks."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ax.set_xticks(xticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if y:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())


def machines_line(machines: list[dict]) -> str:
    """The distinct machines of many measurements, with the span of dates and load averages."""
    groups: dict[str, list[dict]] = {}
    for m in machines:
        if m:
            groups.setdefault(machine_line({k: v for k, v in m.items() if k not in ("date", "load_average")}),
                              []).append(m)
    parts = []
    for line, ms in groups.items():
        dates = sorted(m["date"][:16].replace("T", " ") for m in ms if m.get("date"))
        loads = [m["load_average"][0] for m in ms if m.get("load_average")]
        extra = []
        if dates:
            extra.append(dates[0] + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") + " UTC")
        if loads:
            extra.append(f"load average {min(loads):.1f}" + (f"–{max(loads):.1f}" if max(loads) > min(loads) else ""))
        parts.append(line + (" (" + ", ".join(extra) + ")" if extra else ""))
    return "; ".join(parts) if parts else "machine not recorded"


def page_figure_efficiency(page: Page, timing: dict, quality: dict) -> str:
    import matplotlib.pyplot as plt

    panels = [p for p in ("time", "kid", "fid") if (timing if p == "time" else
                                                       [q for q in quality.values() if q.get(p)])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.0), squeeze=False)
    if not panels:
        return ""
    colours = {"ddpm": "C3", "ddim": "C0", "dpm_solver": "C2"}
    labels = {"ddpm": "DDPM", "ddim": "DDIM", "dpm_solver": "DPM-Solver++(2M)"}
    for ax, panel in zip(axes[0], panels):
        for sampler, colour in colours.items():
            if panel == "time":
                pts = sorted((t["nfe"], t["seconds_per_image"]) for t in timing.values() if t["sampler"] == sampler)
                ax.set_ylabel("seconds per image")
            else:
                pts = sorted((q["nfe"], q[panel]["value"] * (1000 if panel == "kid" else 1))
                             for q in quality.values() if q["sampler"] == sampler and q.get(panel))
                ax.set_ylabel(f"{panel.upper()}{' ×1000' if panel == 'kid' else ''} (lower is better)")
            if pts:
                ax.plot(*zip(*pts), "o-", color=colour, label=labels[sampler])
        log_ticks(ax, sorted({a["nfe"] for a in [*timing.values(), *quality.values()]}), y=panel == "time")
        ax.set_xlabel("model calls (NFE)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return page.figure(fig, "efficiency.png", "Time per image and sample quality against the number of model calls.")


def schedule_comparison(page: Page) -> str:
    out = ["## Linear against cosine noise schedule\n",
           ("Two training runs that differ only in the noise schedule (same UNet, data order, seed, batch, "
            "learning rate and steps); every checkpoint's EMA model samples the same noise with DDIM-50.\n")]
    files = sorted(page.results.glob("schedule_comparison*.json"))
    runs = [(f, json.loads(f.read_text())) for f in files]
    runs = [(f, d) for f, d in runs if any(r.get("points") for r in d.get("runs", {}).values())]
    if not runs:
        return "\n".join(out) + "\n" + not_run("python benchmarks/schedule_comparison.py --size small   "
                                               "# CPU; --size full --metric fid on a GPU")
    import matplotlib.pyplot as plt

    for path, data in runs:
        ev = data.get("evaluation", {})
        metric = ev.get("metric", "kid")
        out.append(f"### Size `{data.get('size')}`\n")
        out.append(f"Shared settings: `{' '.join(data.get('shared_settings', []))}`. Samples: {ev.get('n')} per "
                   f"checkpoint ({ev.get('sampler')}), scored against {ev.get('reference')} with "
                   f"`{ev.get('extractor')}`.\n")
        steps = sorted({p["step"] for r in data["runs"].values() for p in r.get("points", [])})
        by = {s: {p["step"]: p for p in r.get("points", [])} for s, r in data["runs"].items()}
        cols = [s for s in ("linear", "cosine") if s in by]
        header = ["step"] + [f"{s}: KID ×1000" for s in cols] + ([f"{s}: FID" for s in cols] if metric == "fid" else [])
        rows = []
        for step in steps:
            row = [f"{step:,}"]
            row += [f"{num(by[s][step]['kid'], 2, 1000)} ± {num(by[s][step]['kid_std'], 2, 1000)}"
                    if step in by[s] else "–" for s in cols]
            if metric == "fid":
                row += [num(by[s].get(step, {}).get("fid"), 2) for s in cols]
            rows.append(row)
        out.append(table(header, rows) + "\n")
        key, scale = ("fid", 1) if metric == "fid" else ("kid", 1000)
        common = [step for step in steps if all(step in by[s] for s in cols)]
        if len(cols) == 2 and common:
            shown = {s: num(by[s][common[-1]].get(key), 2, scale) for s in cols}
            out.append(f"At step {common[-1]:,}: {key.upper()}{' ×1000' if key == 'kid' else ''} linear "
                       f"{shown['linear']}, cosine {shown['cosine']} (one seed per schedule).\n")
        fig, ax = plt.subplots(figsize=(4.5, 3.0))
        for s in cols:
            pts = sorted((p["step"], p[key] * scale) for p in by[s].values() if key in p)
            ax.plot(*zip(*pts), "o-", label=s)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{key.upper()}{' ×1000' if key == 'kid' else ''} (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(page.figure(fig, f"{path.stem}.png", f"{key.upper()} against training steps, size "
                                                        f"{data.get('size')}."))
        out.append("Measured on: " + machines_line([p.get("machine") for r in data["runs"].values()
                                                    for p in r.get("points", [])]) + ".\n")
    return "\n".join(out)


def sampler_overhead(page: Page) -> str:
    out = ["## Sampler overhead outside the model\n"]
    data = page.load("sampler_overhead.json")
    if not data:
        return "\n".join(out) + "\n" + not_run("python benchmarks/sampler_overhead.py")
    setup = data.get("setup", {})
    out.append(f"Time per sampler step with a model that costs nothing, against diffusers' schedulers and one "
               f"UNet forward ({setup.get('timing', '')}). Images {setup.get('image_shape')}, "
               f"{setup.get('num_steps')} steps, {setup.get('device')}.\n")
    for batch, res in data.get("results", {}).items():
        rows = [[name, num(v["median"], 1), num(v["min"], 1)] for name, v in res.get("ours_us_per_step", {}).items()]
        rows += [[f"diffusers {name}", num(v["median"], 1), num(v["min"], 1)]
                 for name, v in res.get("diffusers_us_per_step", {}).items()]
        unet = res.get("unet", {})
        out.append(f"**{batch.replace('_', ' ')}** (UNet forward, {unet.get('parameters', 0):,} parameters: "
                   f"{num(unet.get('forward_ms', {}).get('median'), 1)} ms median)\n")
        out.append(table(["sampler step", "µs median", "µs min"], rows) + "\n")
    agree = data.get("agreement_max_abs_diff_vs_diffusers_ddim")
    if agree:
        out.append("Largest difference from diffusers' DDIM on the same model and noise: "
                   + ", ".join(f"{k}: {v:.2g}" for k, v in agree.items()) + ".\n")
    out.append(f"Measured on: {machine_line({**data.get('machine', {}), 'device': setup.get('device')})}.\n")
    return "\n".join(out)


def train_throughput(page: Page) -> str:
    out = ["## Training throughput\n"]
    data = page.load("train_throughput.json")
    if not data:
        return "\n".join(out) + "\n" + not_run("python benchmarks/train_throughput.py")
    if data.get("note"):
        out.append(sentence(data["note"]) + "\n")
    rows = []
    for run in data.get("runs", []):
        for c in run.get("comparisons", []):
            rows.append([run["threads"], f"UNet {c['preset']} (batch {c['batch']}, {c['precision']})",
                         num(c["images_per_s_diffusion_lib"], 1), num(c["images_per_s_diffusers"], 1),
                         num(c["speed_ratio_ours_over_diffusers"], 2)])
        for t in run.get("trainer", []):
            rows.append([run["threads"], f"Trainer, `{t['config']}` (batch {t['batch']})", num(t["images_per_s"], 1),
                         "–", "–"])
    out.append(table(["threads", "what", "images/s (ours)", "images/s (diffusers)", "ratio"], rows) + "\n")
    m = data.get("machine", {})
    out.append(f"Measured on: {m.get('cpu')} ({m.get('cpu_count')} cores), torch {m.get('torch')}. "
               f"Command: `{data.get('command')}`.\n")
    return "\n".join(out)


def fid_extractor(page: Page) -> str:
    out = ["## FID: feature extraction and the Fréchet distance\n"]
    data = page.load("fid_extractor.json")
    if not data:
        return "\n".join(out) + "\n" + not_run("python benchmarks/fid_extractor.py")
    if "extractor" in data:
        part = data["extractor"]
        rows = [[r["extractor"], r["device"], r["threads"], r["batch_size"], num(r["images_per_second"], 2),
                 num(r.get("images_per_cpu_second"), 2)] for r in part["result"]]
        out.append("Speed of the standard FID Inception on 32 × 32 images (resized to 299 inside):\n")
        out.append(table(["extractor", "device", "threads", "batch", "images/s", "images per CPU second"], rows))
        out.append(f"\nMeasured on: {machine_line({**part['machine'], 'load_average': part.get('load_average_before')})}.\n")
    frechets = [("all threads", data.get("frechet"))]
    one = page.load("fid_frechet_1thread.json")
    if one and "frechet" in one:
        frechets.append(("1 thread", one["frechet"]))
    rows = []
    for label, part in frechets:
        if not part:
            continue
        r = part["result"]
        for key, name in (("eigh", "ours: symmetric eigendecompositions"), ("svd_2k", "ours: n × n route, 2k features"),
                          ("torchmetrics_eigvals", "torchmetrics: eigvals of Σ₁Σ₂"), ("scipy_sqrtm", "scipy sqrtm")):
            if key in r:
                diff = {"svd_2k": "svd_2k_rel_diff_vs_eigh_same_features", "torchmetrics_eigvals": "torchmetrics_rel_diff",
                        "scipy_sqrtm": "scipy_sqrtm_rel_diff"}.get(key)
                rows.append([label, name, num(r[key]["wall_seconds"], 1), num(r[key]["cpu_seconds"], 1),
                             f"{r[diff]:.1e}" if diff and diff in r else "reference"])
    if rows:
        out.append(f"Fréchet distance of two {frechets[0][1]['result'].get('dimension', 2048)}-d Gaussians:\n")
        out.append(table(["threads", "method", "wall s", "CPU s", "relative difference"], rows) + "\n")
    check = data.get("torch_fidelity_check", {}).get("result")
    if check:
        out.append(f"Agreement with torch-fidelity's feature pipeline (same weights): largest difference "
                   f"{check['torch_fidelity_max_abs_diff_rgb32']:.1e} (RGB 32 × 32). torchmetrics' Inception with "
                   f"`antialias=False` differs by {check['torchmetrics_antialias_False_rel_l2_diff']:.1e} (relative L2); "
                   f"with its default `antialias=True` by **{100 * check['torchmetrics_antialias_True_rel_l2_diff']:.0f} %**, "
                   f"which is why the course switches anti-aliasing off ([chapter 9](../notebooks/09_evaluating_generative_models.ipynb)). "
                   f"{sentence(check.get('note', ''))}\n")
    return "\n".join(out)


def guidance_sweep(page: Page) -> str:
    out = ["## Classifier-free guidance sweep\n"]
    data = page.load("guidance_sweep.json")
    if not data or not data.get("rows"):
        return "\n".join(out) + "\n" + not_run("python benchmarks/guidance_sweep.py --parts sweep --threads 1")
    settings = data.get("settings", {})
    out.append(f"The shipped `fashion_cfg` model guided at every scale w, ε̃ = ε_u + w(ε_c − ε_u) (w = 1: the "
               f"conditional model, w = 0: the unconditional one; Ho & Salimans' own weight is w − 1, see the "
               f"[notation](notation.md)): {settings.get('samples_per_class')} samples of each class per scale, "
               f"the same noise at every scale, DDIM {settings.get('num_steps')} steps. Class accuracy: how often "
               f"the shipped classifier names the class that was asked for; diversity: the mean distance between "
               f"the classifier's features of two samples of one class "
               f"([chapter 8](../notebooks/08_classifier_free_guidance.ipynb)).\n")
    fid = {row["scale"]: row for row in data.get("fid", [])}
    fid_n = {row.get("n") for row in fid.values()}
    fid_head = f"FID ({fid_n.pop():,} samples)" if len(fid_n) == 1 and None not in fid_n else "FID"
    rows = [[num(r["scale"], 1), num(r["scale"] - 1, 1), num(r["class_accuracy"], 3), num(r["diversity"], 2),
             num(fid[r["scale"]]["fid"], 1) if r["scale"] in fid else "–", num(r.get("sampling_seconds"), 0)]
            for r in data["rows"]]
    out.append(table(["w", "Ho & Salimans' weight (w − 1)", "class accuracy", "diversity", fid_head, "sampling s"],
                     rows) + "\n")
    from diffusion_lib.pipelines.guidance_sweep import plot_guidance_sweep

    out.append(page.figure(plot_guidance_sweep(data), "guidance_sweep.png",
                           "Class accuracy and within-class diversity"
                           + (" (left), FID (right)," if any(r.get("fid") is not None for r in data["rows"]) else "")
                           + " against the guidance scale w."))
    out.append(f"Measured on: {machine_line(data.get('machine'))}.\n")
    return "\n".join(out)


def flow_vs_diffusion(page: Page) -> str:
    out = ["## Flow matching against diffusion at few model calls\n"]
    data = page.load("flow_vs_diffusion.json")
    if not data or not (data.get("points") or data.get("straightness")):
        return "\n".join(out) + "\n" + not_run("python benchmarks/flow_vs_diffusion.py --threads 1")
    labels = {"ddim": "DDIM (η = 0)", "dpm_solver": "DPM-Solver++(2M)", "flow_euler": "flow Euler",
              "flow_heun": "flow Heun"}
    models = data.get("models", {})
    out.append("Two models trained alike ([chapter 11](../notebooks/11_flow_matching.ipynb)): "
               + "; ".join(f"{name}: `{Path(m['checkpoint']).name}` (step {m['step']:,}, {m['prediction_type']} "
                           f"prediction, sha256 `{m['sha256'][:12]}`)" for name, m in models.items())
               + ". The same noise for every arm, no x̂0 clipping; flow Heun takes two calls per step, so its "
                 "points sit at their counted calls.\n")
    points = data.get("points", [])
    if points:
        rows = [[labels.get(p["arm"], p["arm"]), p["steps"], f"{p['model_calls']:g}", f"{p['n']:,}", num(p["fid"], 1),
                 num(p.get("sampling_seconds"), 0)] for p in points]
        reference = {p["fid_n_reference"] for p in points}
        extractor = {p["extractor"] for p in points}
        out.append(table(["arm", "steps", "model calls (counted)", "samples", "FID", "sampling s"], rows) + "\n")
        out.append(f"FID against {', '.join(f'{n:,}' for n in sorted(reference))} test images, extractor "
                   f"{', '.join(sorted(extractor))}.\n")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.8, 3.2))
        for i, (arm, label) in enumerate(labels.items()):
            pts = sorted((p["model_calls"], p["fid"]) for p in points if p["arm"] == arm)
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{i}", label=label, ms=4)
        log_ticks(ax, sorted({p["model_calls"] for p in points}))
        ax.set_xlabel("model calls per sample")
        ax.set_ylabel("FID (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(page.figure(fig, "flow_vs_diffusion.png", "FID against the number of model calls."))
    straight = data.get("straightness", {})
    if straight:
        rows = [[labels.get(arm, arm), r["steps"], f"{r['n']:,}", num(r["mean"], 3),
                 " / ".join(num(q, 3) for q in r["quartiles"])] for arm, r in straight.items()]
        out.append("Straightness of the sampling paths: the mean distance of the visited states from the chord "
                   "x_T → x_0 over the chord's length (`metrics.chord_deviation`, 0 for a straight path).\n")
        out.append(table(["arm", "steps", "samples", "mean chord deviation", "quartiles"], rows) + "\n")
    out.append("Measured on: " + machines_line([r.get("machine") for r in [*points, *straight.values()]]) + ".\n")
    out.append("Commands: " + ", ".join(f"`{c}`" for c in dict.fromkeys(data.get("commands", []))) + ".\n")
    return "\n".join(out)


def model_cards(page: Page) -> str:
    out = ["## The shipped models\n"]
    cards = [json.loads(path.read_text()) for path in sorted(page.checkpoints.glob("*.json"))]
    if not cards:
        return "\n".join(out) + "\n" + not_run("make checkpoints")
    out.append("The models in `checkpoints/`, from their model cards (`checkpoints/<name>.json`, written by "
               "scripts/ship_model.py and scripts/measure_model.py; `make checkpoints` makes them again). Wall "
               "time: training only, summed over resumed segments, on the hardware the card names.\n")
    rows = []
    for card in cards:
        measured = card.get("measured", {})
        facts = []
        if card.get("test_accuracy") is not None:
            facts.append(f"test accuracy {100 * card['test_accuracy']:.1f} %")
        if card.get("report", {}).get("psnr_db") is not None:
            facts.append(f"test PSNR {card['report']['psnr_db']:.1f} dB, latent scale {card['latent_scale']:.3f}")
        if "guided" in measured:
            g = measured["guided"]
            facts.append(f"class accuracy {100 * g['class_accuracy']:.1f} % at w = {g['scale']:g} ({g['n']} samples)")
        if "coverage" in measured:
            c = measured["coverage"]
            facts.append(f"smallest class share {100 * c['min_share']:.1f} % of {c['n']} samples")
        if "fp16_check" in measured:
            f = measured["fp16_check"]
            facts.append(f"fp16 vs fp32: max {f['max_pixel_difference_8bit']}/255, classifier agrees on "
                         f"{100 * f['classifier_agreement']:.0f} %")
        for key in ("fid", "fid_10k"):
            if key in measured:
                facts.append(f"FID {measured[key]['fid']:.1f} ({measured[key]['n']:,} samples)")
        wall = card.get("wall_time_s")
        rows.append([f"`{card['name']}`", f"{card.get('steps'):,}", num(wall / 60 if wall else None, 0),
                     card.get("weights", ""), num(card.get("size_bytes", 0) / 1e6, 1), "; ".join(facts) or "–"])
    out.append(table(["model", "steps", "wall time (min)", "weights", "MB", "measured"], rows) + "\n")
    hardware = sorted({f"`{card['name']}`: {card['hardware']}" for card in cards if card.get("hardware")})
    out.append("Trained on: " + "; ".join(hardware) + ".\n")
    scored = sorted((card["measured"]["fid"]["fid"], card) for card in cards if "fid" in card.get("measured", {}))
    if scored:
        first = scored[0][1]["measured"]["fid"]
        listed = ", ".join(f"`{card['name']}` {fid:.1f}" + (f" (w = {card['measured']['fid']['guidance_scale']:g})"
                                                           if card["measured"]["fid"]["guidance_scale"] != 1 else "")
                           for fid, card in scored)
        out.append(f"FID of {first['n']:,} samples against the {first['n_reference']:,} {first['split']} images "
                   f"(extractor {first['extractor']}), best first: {listed}. Samples as each card's `measured.sampler` "
                   f"says (diffusion models: DDIM, 50 steps, EMA weights, pixel models with x̂0 clipped; flow models: "
                   f"Euler, 50 steps, no clipping).\n")
    return "\n".join(out)


def others(page: Page, known: set[str]) -> str:
    rest = sorted(p.name for p in page.results.glob("*.json") if p.name not in known
                  and not p.name.startswith("schedule_comparison"))
    if not rest:
        return ""
    return "## Other result files\n\n" + "\n".join(f"- `benchmarks/results/{n}`" for n in rest) + "\n"


def render(results: Path, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    page = Page(results, out_dir)
    sections = [model_cards(page), efficiency(page), schedule_comparison(page), guidance_sweep(page),
                flow_vs_diffusion(page), sampler_overhead(page), train_throughput(page), fid_extractor(page),
                others(page, {"efficiency.json", "sampler_overhead.json", "train_throughput.json",
                              "fid_extractor.json", "fid_frechet_1thread.json", "guidance_sweep.json",
                              "flow_vs_diffusion.json"})]
    head = ("# Benchmark results\n\n"
            "<!-- Generated by scripts/render_results.py from benchmarks/results/*.json: edit the script, "
            "not this page. -->\n\n"
            "Every number the course measures outside the chapters: what each benchmark in `benchmarks/` wrote, "
            "with the machine and date it ran on. Timings on a shared CPU depend on what else ran (the load "
            "average is given); ratios measured in the same run are the steadier numbers. To refresh this page, "
            "run a benchmark, then `python scripts/render_results.py`.\n")
    path = out_dir / "results.md"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n" + "\n".join(s for s in sections if s).rstrip() + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--out-dir", type=Path, default=ROOT / "book")
    args = p.parse_args(argv)
    print(f"wrote {render(args.results, args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
