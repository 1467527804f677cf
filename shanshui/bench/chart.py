"""The bench chart, drawn with Pillow (no matplotlib needed): per measured row, a bar for the generation median, one
for the U-Net step median and one for the generation's peak RSS, each panel on its own linear scale, rows grouped by
model and size (low-memory rows in a lighter shade)."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

COLORS = {"onnxruntime": (52, 101, 164), "torch": (204, 102, 0), "tensorrt": (78, 154, 6), "diffusers": (117, 80, 123),
          "optimum": (193, 125, 17), "sdcpp": (0, 128, 128)}
W, ROW_H, TOP, LABEL_W, PANEL_W, GAP = 1480, 26, 70, 430, 310, 40


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def draw_chart(report: dict) -> Image.Image:
    rows = [r for r in report["rows"] if r["status"] == "ok" and r.get("generation")]
    n_groups = len({(r["model"], r["size"]) for r in rows})
    h = TOP + ROW_H * (len(rows) + n_groups) + 60
    img = Image.new("RGB", (W, max(h, 160)), "white")
    d = ImageDraw.Draw(img)
    f, fb, fs = _font(14), _font(18), _font(12)
    env, s = report["environment"], report["settings"]
    d.text((12, 10), f"shanshui bench: {s['steps']} steps, {env.get('threads') or 'default'} thread{'' if env.get('threads') == 1 else 's'}, "
                     f"{env.get('cpu')}" + (f", {env['gpu']}" if env.get("gpu") else ""), fill="black", font=fb)
    x_gen, x_unet, x_mem = LABEL_W, LABEL_W + PANEL_W + GAP, LABEL_W + 2 * (PANEL_W + GAP)
    d.text((x_gen, TOP - 26), "generation, median (s)", fill="black", font=f)
    d.text((x_unet, TOP - 26), "U-Net step, median (ms; sdcpp: in pipeline)", fill="black", font=f)
    d.text((x_mem, TOP - 26), "peak RSS of the generation (MB)", fill="black", font=f)
    if not rows:
        d.text((12, TOP + 10), "no row was measured", fill="black", font=f)
        return img
    gens = [r["generation"].get("median_s") or 0.0 for r in rows]
    unets = [((r["stages"] or {}).get("unet_step") or {}).get("median_s") or 0.0 for r in rows]
    mems = [r["generation"].get("peak_rss_mb") or 0.0 for r in rows]
    gmax, umax, mmax = max(gens) or 1.0, max(unets) or 1.0, max(mems) or 1.0
    y, group = TOP, None
    for r, g, u, m in zip(rows, gens, unets, mems):
        if (r["model"], r["size"]) != group:
            group = (r["model"], r["size"])
            d.text((12, y + 4), f"{r['model']} @ {r['size']} px", fill="black", font=fb)
            y += ROW_H
        label = r["id"].split("/", 1)[1]
        color = COLORS.get(r["runner"] if r["runner"] != "shanshui" else r["backend"], (120, 120, 120))
        if r.get("memory"):
            color = tuple(c + (255 - c) // 2 for c in color)
        d.text((24, y + 5), label, fill="black", font=f)
        for x0, v, vmax, text in ((x_gen, g, gmax, f"{g:.2f}"), (x_unet, u, umax, f"{1000 * u:.0f}"),
                                  (x_mem, m, mmax, f"{m:,.0f}")):
            length = max(1, int((PANEL_W - 60) * v / vmax))
            d.rectangle([x0, y + 4, x0 + length, y + ROW_H - 4], fill=color)
            d.text((x0 + length + 6, y + 6), text, fill="black", font=fs)
        y += ROW_H
    rounds = report.get("settings", {}).get("rounds") or 1
    how = f"in {rounds} fresh processes, the rows taking turns" if rounds > 1 else "in its own process"
    d.text((12, y + 16), f"shorter is faster; each row measured {how} (see the Markdown/JSON report)",
           fill=(90, 90, 90), font=fs)
    return img
