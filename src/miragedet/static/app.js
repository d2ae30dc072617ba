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
  } catch (e) { $("model").textContent = "model: server not reachable"; }
}

function card(file, result) {
  const el = document.createElement("article");
  el.className = "card";
  const img = document.createElement("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  el.appendChild(img);
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
    const r = await fetch("/v1/detect", { method: "POST", body, headers: headers() });
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
