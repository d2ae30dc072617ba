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
// coloured by its p(fake); boxes come from the server (`tiles.boxes`, `tiles.size`).
function whereLayer(tiles) {
  const layer = document.createElement("div");
  layer.className = "where";
  const [w, h] = tiles.size;
  tiles.boxes.forEach(([left, top, right, bottom], k) => {
    const p = tiles.fake_probs[k];
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

function whereLegend(tiles) {
  const legend = document.createElement("div");
  legend.className = "where-legend";
  const top = Math.max(...tiles.fake_probs);
  const coverage = tiles.covered ? "every pixel" : "thinned evenly";
  legend.innerHTML = `<span class="scale"></span><span class="text"></span>`;
  legend.querySelector(".text").textContent =
    `Where-map: ${tiles.fake_probs.length} tiles (${coverage}, ${tiles.aggregate}); most suspicious ${(100 * top).toFixed(1)}% · click the image to hide`;
  legend.title = "tile colour: p(AI) from 0% (green) to 100% (red)";
  return legend;
}

function card(file, result) {
  const el = document.createElement("article");
  el.className = "card";
  const frame = document.createElement("div");
  frame.className = "frame";
  const pic = document.createElement("div");
  pic.className = "pic";
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  pic.appendChild(img);
  frame.appendChild(pic);
  el.appendChild(frame);
  if (result.tiles && $("where").checked) {
    const layer = whereLayer(result.tiles);
    pic.appendChild(layer);
    pic.classList.add("mapped");
    pic.addEventListener("click", () => {
      layer.classList.toggle("hidden");
      pic.classList.toggle("mapped");
    });
    el.appendChild(whereLegend(result.tiles));
  }
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = file.name;
  el.appendChild(name);
  const verdict = document.createElement("div");
  if (result.error) {
    verdict.className = "verdict error";
    verdict.textContent = `Could not score (${result.status}): ${result.error}`;
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
  $("status").textContent = `scoring ${files.length} image(s)…`;
  const body = new FormData();
  for (const f of files) body.append("files", f, f.name);
  let data;
  try {
    // unticked: the server's own view (a checkpoint trained on native crops scores with tiles
    // anyway; its where-map is then simply not drawn)
    const url = $("where").checked ? "/v1/detect?view=tiles" : "/v1/detect";
    const r = await fetch(url, { method: "POST", body, headers: headers() });
    data = await r.json();
    if (!data.results) { $("status").textContent = `error ${r.status}: ${data.detail}`; return; }
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
