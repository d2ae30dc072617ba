"use strict";
const $ = (id) => document.getElementById(id);
const keyInput = $("apikey");
keyInput.value = localStorage.getItem("miragedet-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("miragedet-key", keyInput.value); loadModel(); });

function headers() {
  return keyInput.value ? { "X-API-Key": keyInput.value } : {};
}

async function loadModel() {
  try {
    const r = await fetch("/v1/model", { headers: headers() });
    if (!r.ok) { $("model").textContent = `model: ${r.status} ${(await r.json()).detail}`; return; }
    const m = await r.json();
    $("model").textContent = `model ${m.id} · ${m.method} · ${m.backbone_description} · threshold ${m.threshold.toFixed(3)}`;
    if (m.view && m.view.kind !== "resize") $("where").checked = true;
  } catch (e) { $("model").textContent = "model: server not reachable"; }
}

// p(fake) as a colour: green (0) through yellow to red (1), as in `detect --where` plots
function heat(p, alpha) {
  return `hsla(${Math.round(120 * (1 - p))}, 85%, 45%, ${alpha})`;
}

// The where-map over the image: each tile a box at its place (percent of the image as tiled),
// coloured by its p(fake); the server sends them as regions ({box, p}) and `tiles.size`.
function whereLayer(tiles, regions) {
  const layer = document.createElement("div");
  layer.className = "where";
  const [w, h] = tiles.size;
  regions.forEach(({ box: [left, top, right, bottom], p }, k) => {
    const cell = document.createElement("div");
    cell.className = "tile";
    Object.assign(cell.style, {
      left: `${(100 * left) / w}%`, top: `${(100 * top) / h}%`,
      width: `${(100 * (right - left)) / w}%`, height: `${(100 * (bottom - top)) / h}%`,
      background: heat(p, 0.4),
    });
    cell.dataset.p = p.toFixed(4);
    cell.title = `tile ${k + 1}: p(AI) ${(100 * p).toFixed(1)}%`;
    layer.appendChild(cell);
  });
  return layer;
}

function whereLegend(tiles, regions) {
  const legend = document.createElement("div");
  legend.className = "where-legend";
  const top = Math.max(...regions.map((r) => r.p));
  const coverage = tiles.covered ? "every pixel" : "thinned evenly";
  legend.innerHTML = `<span class="scale"></span><span class="text"></span>`;
  legend.querySelector(".text").textContent =
    `Where-map: ${regions.length} tiles (${coverage}, ${tiles.aggregate}); most suspicious ${(100 * top).toFixed(1)}% · click the image to hide`;
  legend.title = "tile colour: p(AI) from 0% (green) to 100% (red)";
  return legend;
}

// A clip's timeline under it: each scored frame's p(fake) at its time (an SVG line with a
// dot per frame, the threshold dashed); clicking a dot seeks the video there.
function timeline(result, video) {
  const W = 240, H = 60, regions = result.regions || [];
  const end = Math.max(result.video.duration || 0, ...regions.map((r) => r.t), 1e-3);
  const x = (t) => (W * t) / end, y = (p) => H - 4 - (H - 8) * p;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "timeline");
  svg.setAttribute("role", "img");
  const mark = document.createElementNS(ns, "line");
  Object.entries({ x1: 0, x2: W, y1: y(result.threshold), y2: y(result.threshold), class: "threshold" })
    .forEach(([k, v]) => mark.setAttribute(k, v));
  svg.appendChild(mark);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", regions.map((r) => `${x(r.t).toFixed(1)},${y(r.p).toFixed(1)}`).join(" "));
  svg.appendChild(line);
  regions.forEach((r) => {
    const dot = document.createElementNS(ns, "circle");
    Object.entries({ cx: x(r.t), cy: y(r.p), r: 2.5, fill: heat(r.p, 1) }).forEach(([k, v]) => dot.setAttribute(k, v));
    dot.dataset.t = r.t; dot.dataset.p = r.p.toFixed(4);
    const tip = document.createElementNS(ns, "title");
    tip.textContent = `${r.t.toFixed(2)} s: p(AI) ${(100 * r.p).toFixed(1)}%`;
    dot.appendChild(tip);
    if (video) dot.addEventListener("click", () => { video.currentTime = r.t; });
    svg.appendChild(dot);
  });
  const box = document.createElement("div");
  box.className = "timeline-box";
  box.appendChild(svg);
  const top = regions.reduce((a, r) => (r.p > a.p ? r : a), { p: -1, t: 0 });
  const legend = document.createElement("div");
  legend.className = "where-legend";
  legend.textContent = `Timeline: ${result.video.frames_scored} frames over ${(result.video.duration || 0).toFixed(1)} s; most suspicious ${(100 * top.p).toFixed(1)}% at ${top.t.toFixed(2)} s`;
  box.appendChild(legend);
  return box;
}

function card(file, result) {
  const el = document.createElement("article");
  el.className = "card";
  const frame = document.createElement("div");
  frame.className = "frame";
  const pic = document.createElement("div");
  pic.className = "pic";
  const isVideo = file.type.startsWith("video/") || (result.video && !file.type.startsWith("image/"));
  const img = document.createElement(isVideo ? "video" : "img");
  img.src = URL.createObjectURL(file);
  if (isVideo) { img.controls = true; img.muted = true; img.preload = "metadata"; } else { img.alt = file.name; }
  pic.appendChild(img);
  frame.appendChild(pic);
  el.appendChild(frame);
  if (result.video) el.appendChild(timeline(result, isVideo ? img : null));
  if (result.tiles && result.regions && $("where").checked) {
    const layer = whereLayer(result.tiles, result.regions);
    pic.appendChild(layer);
    pic.classList.add("mapped");
    pic.addEventListener("click", () => {
      layer.classList.toggle("hidden");
      pic.classList.toggle("mapped");
    });
    el.appendChild(whereLegend(result.tiles, result.regions));
  }
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  el.appendChild(name);
  const verdict = document.createElement("div");
  if (result.error) {
    verdict.className = "verdict error";
    // the status and the contract's machine-readable code (docs/api.md), then the reason
    const code = result.code ? ` ${result.code}` : "";
    verdict.textContent = `Could not score (${result.status}${code}): ${result.error}`;
    el.appendChild(verdict);
    return el;
  }
  const pct = (100 * result.fake_prob).toFixed(1);
  verdict.className = `verdict ${result.label}`;
  verdict.textContent = result.label === "fake" ? `Likely AI-generated · ${pct}%` : `Likely real · ${pct}% AI`;
  el.appendChild(verdict);
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.innerHTML = `<div style="width:${pct}%"></div><span class="mark" style="left:${(100 * result.threshold).toFixed(1)}%"></span>`;
  bar.title = `p(AI) ${pct}% · threshold ${(100 * result.threshold).toFixed(1)}%`;
  el.appendChild(bar);
  if (result.basis && result.basis.startsWith("declared")) {
    const badge = document.createElement("div");
    badge.className = "badge declared";
    badge.textContent = `AI-generated: metadata ${result.basis}`;
    el.appendChild(badge);
  }
  if (result.open_set && result.open_set.unknown) {
    const badge = document.createElement("div");
    badge.className = "badge unknown";
    badge.textContent = `Unknown generator: unlike every generator this model knows (distance ${result.open_set.distance.toFixed(1)} > ${result.open_set.threshold.toFixed(1)})`;
    el.appendChild(badge);
  }
  if (result.provenance) {
    const prov = document.createElement("div");
    prov.className = "prov";
    prov.textContent = `Provenance: ${result.provenance.summary}`;
    el.appendChild(prov);
  }
  return el;
}

async function score(files) {
  if (!files.length) return;
  $("status").textContent = `scoring ${files.length} file(s)…`;
  const body = new FormData();
  for (const f of files) body.append("files", f, f.name);
  let data;
  try {
    // unticked: the server's own view (a checkpoint trained on native crops scores with tiles
    // anyway; its where-map is then simply not drawn)
    const url = $("where").checked ? "/v1/detect?view=tiles" : "/v1/detect";
    const r = await fetch(url, { method: "POST", body, headers: headers() });
    data = await r.json();
    if (!data.results) { $("status").textContent = `error ${r.status}${data.code ? " " + data.code : ""}: ${data.detail}`; return; }
  } catch (e) { $("status").textContent = `request failed: ${e}`; return; }
  [...data.results].reverse().forEach((res, j) => $("results").prepend(card(files[files.length - 1 - j], res)));
  $("status").textContent = `scored ${data.results.filter((r) => !r.error).length} of ${files.length}`;
}

$("files").addEventListener("change", (e) => score([...e.target.files]));
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => score([...e.dataTransfer.files]));
loadModel();
