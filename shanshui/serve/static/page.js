// The page: talks to this server's own A1111-compatible API (/sdapi/v1/...), no build step, no external files.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { config: null, preset: null, pending: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem("shanshui-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const r = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (r.status === 401) {
    $("keybox").hidden = false;
    throw new Error("需要访问密钥 · enter the API key");
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const retry = r.headers.get("Retry-After");
    throw new Error((data.detail || r.statusText) + (retry ? ` (Retry-After ${retry} s)` : ""));
  }
  return data;
}

function status(text, isError) {
  const t = $("status-text");
  t.textContent = text;
  t.className = isError ? "error" : "";
  if (state.pending) state.pending.text.textContent = text;
}

function setProgress(value) {
  $("bar").value = value;
  if (state.pending) state.pending.bar.value = value;
}

function showPending(width, height) {  // a card where the painting will appear, with the live progress
  const fig = document.createElement("figure");
  fig.className = "pending";
  const box = document.createElement("div");
  box.className = "placeholder";
  box.style.aspectRatio = `${width} / ${height}`;
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = 0;
  const text = document.createElement("span");
  box.append(bar, text);
  fig.append(box);
  $("gallery").prepend(fig);
  $("empty").hidden = true;
  state.pending = { fig, bar, text };
}

function hidePending() {
  if (state.pending) state.pending.fig.remove();
  state.pending = null;
  $("empty").hidden = $("gallery").children.length > 0;
}

function renderPresets(presets) {
  const box = $("presets");
  box.textContent = "";
  for (const p of presets) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "preset";
    b.dataset.key = p.key;
    const shape = document.createElement("span");
    shape.className = "shape";
    const scale = 22 / Math.max(p.width, p.height);
    shape.style.width = Math.round(p.width * scale) + "px";
    shape.style.height = Math.round(p.height * scale) + "px";
    const text = document.createElement("span");
    text.className = "ptext";
    const zh = document.createElement("span");
    zh.className = "zh";
    zh.textContent = p.zh;
    const small = document.createElement("small");
    small.textContent = `${p.en} ${p.width}×${p.height}`;
    text.append(zh, " ", small);
    b.append(shape, text);
    b.addEventListener("click", () => choosePreset(p));
    box.append(b);
  }
}

function choosePreset(p) {
  state.preset = p;
  for (const b of document.querySelectorAll(".preset")) b.setAttribute("aria-pressed", String(b.dataset.key === p.key));
}

async function loadConfig() {
  const c = await api("/api/config");
  state.config = c;
  $("model").textContent = c.model;
  renderPresets(c.presets);
  choosePreset(c.presets[0]);
  const sel = $("sampler");
  sel.textContent = "";
  for (const name of c.samplers) sel.append(new Option(name, name, false, name === c.defaults.sampler_name));
  $("steps").value = c.defaults.steps;
  $("cfg").value = c.defaults.cfg_scale;
  $("init").disabled = $("strength").disabled = !c.img2img;
  $("i2i-note").hidden = c.img2img;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(new Error("无法读取图片 · cannot read the image"));
    r.readAsDataURL(file);
  });
}

function pngBlobUrl(b64) {
  const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
  return URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
}

function addToGallery(b64, infotext, info, i) {
  const url = pngBlobUrl(b64);
  const seed = info.all_seeds[i];
  const fig = document.createElement("figure");
  const img = document.createElement("img");
  img.src = url;
  img.alt = info.prompt;
  img.title = infotext;
  const cap = document.createElement("figcaption");
  const p = document.createElement("div");
  p.className = "p";
  p.textContent = info.prompt;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${info.width}×${info.height} · ${info.sampler_name} · ${info.steps} steps · CFG ${info.cfg_scale} · seed ${seed}` +
    (info.negative_prompt ? ` · neg: ${info.negative_prompt}` : "") +
    (info.denoising_strength != null ? ` · strength ${info.denoising_strength}` : "");
  const a = document.createElement("a");
  a.href = url;
  a.download = `shanshui-${seed}.png`;
  a.textContent = "下载 PNG · download";
  cap.append(p, meta, a);
  fig.append(img, cap);
  $("gallery").prepend(fig);
  $("empty").hidden = true;
}

async function pollProgress(task, until) {
  while (!until.done) {
    try {
      const p = await api("/sdapi/v1/progress?id_task=" + encodeURIComponent(task));
      if (until.done) break;
      if (p.status === "queued") {
        status(`排队中 · queued (${p.queue_position} ahead)`);
      } else if (p.status === "running") {
        const s = p.state;
        const m = /^image (\d+)\/(\d+)/.exec(p.textinfo);
        const img = m && Number(m[2]) > 1 ? `${m[0]} · ` : "";
        status(`${img}第 ${s.sampling_step}/${s.sampling_steps} 步 · step ${s.sampling_step}/${s.sampling_steps}`);
        setProgress(p.progress);
      }
    } catch (e) { /* a missed poll is harmless */ }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function paint(ev) {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) { status("请输入提示词 · enter a prompt", true); return; }
  const task = "page-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
  const body = {
    prompt, negative_prompt: $("negative").value, steps: Number($("steps").value), cfg_scale: Number($("cfg").value),
    width: state.preset.width, height: state.preset.height, sampler_name: $("sampler").value,
    seed: $("random").checked ? -1 : Number($("seed").value), force_task_id: task,
  };
  const file = $("init").files[0];
  let path = "/sdapi/v1/txt2img";
  $("paint").disabled = true;
  $("bar").hidden = false;
  showPending(body.width, body.height);
  setProgress(0);
  status("开始 · starting…");
  const until = { done: false };
  try {
    if (file && state.config.img2img) {
      body.init_images = [await readFile(file)];
      body.denoising_strength = Number($("strength").value);
      path = "/sdapi/v1/img2img";
    }
    const polling = pollProgress(task, until);
    const out = await api(path, body).finally(() => { until.done = true; });
    await polling;
    hidePending();
    const info = JSON.parse(out.info);
    out.images.forEach((b64, i) => addToGallery(b64, info.infotexts[i], info, i));
    if ($("random").checked) $("seed").value = info.seed;
    status(`完成 · done (seed ${info.seed})`);
  } catch (e) {
    hidePending();
    status(e.message, true);
  } finally {
    $("paint").disabled = false;
    $("bar").hidden = true;
  }
}

$("random").addEventListener("change", () => { $("seed").disabled = $("random").checked; });
$("strength").addEventListener("input", () => { $("strength-out").textContent = $("strength").value; });
$("apikey").addEventListener("change", () => {
  sessionStorage.setItem("shanshui-key", $("apikey").value);
  loadConfig().then(() => { $("keybox").hidden = true; status(""); }).catch((e) => status(e.message, true));
});
$("form").addEventListener("submit", paint);
loadConfig().catch((e) => status(e.message, true));
