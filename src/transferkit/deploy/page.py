"""The page `transferkit serve` shows at `GET /`: pick or drop an image, see it and its top classes. One
self-contained document (no external scripts, styles or fonts: it works offline and fetches nothing but this
server's /metadata and /predict); class names reach it as JSON and are written as text, never as HTML."""

# What the browser may load for this page: nothing from elsewhere (the page's own inline script and style,
# the picked image as a blob: URL, and requests to this server).
PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob:; "
               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>transferkit serve</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 46rem; padding: 1rem; color: #1b1b1b; }
  h1 { font-size: 1.3rem; margin: 0 0 .2rem; }
  #model { color: #555; margin: 0 0 1rem; font-size: .9rem; }
  #drop { display: block; border: 2px dashed #8a8a8a; border-radius: .5rem; padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #1f6feb; background: #eef4ff; }
  #view { display: flex; gap: 1rem; margin-top: 1rem; flex-wrap: wrap; align-items: flex-start; }
  #preview { width: 14rem; max-height: 16rem; object-fit: contain; border-radius: .3rem; }
  #preview[hidden] { display: none; }
  table { border-collapse: collapse; flex: 1; min-width: 14rem; }
  td { padding: .25rem .4rem; border-bottom: 1px solid #e3e3e3; }
  td.bar { width: 45%; } .bar span { display: block; height: .7rem; background: #1f6feb; border-radius: .2rem; }
  td.p { text-align: right; font-variant-numeric: tabular-nums; }
  #status { margin-top: 1rem; min-height: 1.3rem; } #status.error { color: #b00020; }
</style>
</head>
<body>
<h1>transferkit serve</h1>
<p id="model">loading the model's description ...</p>
<label id="drop" for="file">Pick an image, or drop one here
  <input id="file" type="file" accept="image/*" hidden>
</label>
<div id="status" role="status"></div>
<div id="view">
  <img id="preview" alt="the image sent" hidden>
  <table id="result" aria-label="top classes"><tbody></tbody></table>
</div>
<p>Top class: <output id="top-class"></output></p>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const say = (text, error) => { $("status").textContent = text; $("status").className = error ? "error" : ""; };

fetch("metadata").then((r) => r.json()).then((m) => {
  const run = m.run || {}, val = run.validation || {};
  const parts = [`${m.class_names.length} classes`, `input ${m.input.shape.slice(1, 3).join(" x ")} px`];
  if (run.backbone) parts.push(run.backbone);
  if (typeof val.accuracy === "number") parts.push(`validation accuracy ${(100 * val.accuracy).toFixed(1)}%`);
  $("model").textContent = parts.join(" \\u00b7 ");
}, () => { $("model").textContent = "the model's description could not be read"; });

function show(rows) {
  const body = $("result").tBodies[0];
  body.replaceChildren();
  for (const row of rows) {
    const tr = body.insertRow(), bar = document.createElement("span");
    tr.insertCell().textContent = row.class;
    const cell = tr.insertCell(); cell.className = "bar"; bar.style.width = `${100 * row.probability}%`;
    cell.append(bar);
    const p = tr.insertCell(); p.className = "p"; p.textContent = `${(100 * row.probability).toFixed(1)}%`;
  }
  $("top-class").textContent = rows.length ? rows[0].class : "";
  $("top-class").dataset.probability = rows.length ? rows[0].probability : "";
}

async function classify(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file); preview.hidden = false;
  show([]); say(`classifying ${file.name} ...`);
  const form = new FormData(); form.append("file", file, file.name);
  const started = performance.now();
  try {
    const response = await fetch("predict?top_k=5", { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) { say(answer.error || `the server answered ${response.status}`, true); return; }
    show(answer[0].predictions);
    say(`${file.name}: ${Math.round(performance.now() - started)} ms`);
  } catch (e) { say(`the server could not be reached (${e})`, true); }
}

$("file").addEventListener("change", (e) => classify(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); classify(e.dataTransfer.files[0]); });
</script>
</body>
</html>
"""
