// ECG-QA demo page: plain JavaScript against the JSON API (see /docs). No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE = 100;
const SHOW_BARS = 12;
const state = { offset: 0, total: 0, upload: null, example: null, maxChars: 500, attributes: null };

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; }
$("error-close").onclick = clearError;

// fetch + JSON, turning every non-2xx answer into an Error carrying the server's message.
async function api(path, options) {
  let res;
  try {
    res = await fetch(path, options);
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  if (!res.ok) {
    let detail = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body.detail) detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      if (body.error_id && !detail.includes(body.error_id)) detail += ` (error id ${body.error_id})`;
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  const type = res.headers.get("content-type") || "";
  return type.includes("application/json") ? res.json() : res.blob();
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = String(value);
  o.textContent = text;
  return o;
}

function ensureOption(select, id) {
  if (![...select.options].some((o) => o.value === String(id))) select.appendChild(option(id, `ECG ${id}`));
  select.value = String(id);
}

async function loadInfo() {
  const info = await api("/api/info");
  state.maxChars = info.max_question_chars;
  state.attributes = info.attributes_model;
  $("question").maxLength = info.max_question_chars;
  const data = info.data_version ? ` · data: ${info.data_version} (${info.data_variant}), ${info.n_ecgs} ECGs` : "";
  $("info").textContent =
    `model ${info.model_name} · ${info.n_classes} answer classes · ${info.rate} Hz${data} · ecgqa ${info.version}`;
}

async function loadPage(offset) {
  const keep1 = $("ecg1").value, keep2 = $("ecg2").value;
  const page = await api(`/api/ecgs?offset=${offset}&limit=${PAGE}`);
  state.offset = page.offset;
  state.total = page.total;
  const s1 = $("ecg1"), s2 = $("ecg2");
  s1.replaceChildren();
  s2.replaceChildren(option("", "none"));
  for (const e of page.items) {
    const label = `ECG ${e.id} · ${e.n_questions} question${e.n_questions === 1 ? "" : "s"}`;
    s1.appendChild(option(e.id, label));
    s2.appendChild(option(e.id, label));
  }
  const last = Math.min(page.offset + page.items.length, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "no ECGs";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
  if (keep1) ensureOption(s1, keep1);
  if (keep2) ensureOption(s2, keep2);
  showPlots();
}

// The attribute classifier's findings for the picked ECG: classes above the threshold, with scores.
async function showFindings(id) {
  const box = $("findings-box"), list = $("findings");
  box.hidden = !state.attributes || !id || !!state.upload;
  if (box.hidden) return;
  list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "scoring…" }));
  try {
    const f = await api(`/api/ecgs/${id}/findings`);
    if ($("ecg1").value !== String(id)) return;  // another ECG was picked meanwhile
    $("findings-model").textContent =
      `(${f.model_name}: ${f.findings.length} of ${f.n_classes} classes above ${f.threshold}) · ECG ${id}`;
    list.replaceChildren(...f.findings.map((x) => {
      const li = document.createElement("li");
      const name = Object.assign(document.createElement("span"), { className: "name", textContent: x.name });
      const value = Object.assign(document.createElement("span"), { className: "value", textContent: x.score.toFixed(3) });
      li.append(name, value);
      return li;
    }));
    if (!f.findings.length) {
      list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: "no class above the threshold" }));
    }
  } catch (e) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "muted", textContent: `no findings: ${e.message}` }));
  }
}

function showPlots() {
  if (state.upload) { showFindings(null); return; }
  const id1 = $("ecg1").value, id2 = $("ecg2").value;
  showFindings(id1);
  $("ecg-meta").textContent = "";
  if (id1) {
    $("plot1").src = `/api/ecgs/${id1}/plot.png`;
    $("cap1").textContent = id2 ? `first ECG: ${id1}` : "";
  }
  $("fig2").hidden = !id2;
  if (id2) {
    $("plot2").src = `/api/ecgs/${id2}/plot.png`;
    $("cap2").textContent = `second ECG: ${id2}`;
  }
}
$("plot1").onerror = () => { if ($("plot1").getAttribute("src")) showError("could not load the ECG plot"); };
$("plot2").onerror = () => { if (!$("fig2").hidden) showError("could not load the second ECG plot"); };

async function loadExamples() {
  const examples = await api("/api/examples");
  const list = $("examples");
  list.replaceChildren();
  for (const ex of examples) {
    const li = document.createElement("li");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = `${ex.question_type} · ECG ${ex.ecg_ids.join(" & ")}`;
    li.append(tag, document.createTextNode(ex.question));
    li.onclick = () => useExample(ex);
    list.appendChild(li);
  }
  if (!examples.length) list.innerHTML = '<li class="muted">no example questions in the prepared data</li>';
}

function useExample(ex) {
  clearUpload();
  ensureOption($("ecg1"), ex.ecg_ids[0]);
  if (ex.ecg_ids[1] !== undefined) ensureOption($("ecg2"), ex.ecg_ids[1]);
  else $("ecg2").value = "";
  $("question").value = ex.question;
  updateCount();
  state.example = ex;
  showPlots();
  ask();
}

function updateCount() { $("count").textContent = `${$("question").value.length} / ${state.maxChars}`; }
$("question").addEventListener("input", updateCount);

async function ask() {
  clearError();
  const question = $("question").value.trim();
  if (!question) { showError("type a question first"); return; }
  const button = $("ask");
  button.disabled = true;
  $("answer-card").classList.add("busy");
  try {
    let result;
    if (state.upload) {
      const form = new FormData();
      for (const f of state.upload) form.append("files", f, f.name);
      form.append("question", question);
      if ($("upload-rate").value) form.append("rate", $("upload-rate").value);
      result = await api("/api/answer/upload", { method: "POST", body: form });
    } else {
      const ids = [$("ecg1").value, $("ecg2").value].filter((v) => v !== "").map(Number);
      if (!ids.length) { showError("pick an ECG first"); return; }
      result = await api("/api/answer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ecg_ids: ids, question }),
      });
    }
    renderAnswer(result);
  } catch (e) {
    showError(e.message);
    $("answer").hidden = true;
    $("answer-empty").hidden = false;
    $("answer-empty").textContent = `No answer: ${e.message}`;
    $("answer-empty").classList.add("failed");
  } finally {
    button.disabled = false;
    $("answer-card").classList.remove("busy");
  }
}
$("ask-form").addEventListener("submit", (ev) => { ev.preventDefault(); ask(); });
$("question").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); ask(); }
});

function renderAnswer(r) {
  $("answer-empty").hidden = true;
  $("answer-empty").classList.remove("failed");
  $("answer").hidden = false;
  $("unrecognised").hidden = r.recognised;  // said before the answer, never after it
  $("unrecognised").textContent = r.warning || "";
  const set = $("answer-set");
  set.replaceChildren();
  if (r.answer.length) {
    for (const a of r.answer) {
      const pill = document.createElement("span");
      pill.className = "pill";
      pill.textContent = a;
      set.appendChild(pill);
    }
  } else {
    const pill = document.createElement("span");
    pill.className = "pill none";
    pill.textContent = "none of the options";
    set.appendChild(pill);
  }
  const ex = state.example;
  const same = ex && !state.upload && ex.question === r.question && JSON.stringify(ex.ecg_ids) === JSON.stringify(r.ecg_ids);
  $("reference").hidden = !same;
  if (same) $("reference").textContent = `dataset answer (${ex.split} split): ${ex.answer.length ? ex.answer.join(", ") : "none"}`;

  const m = r.match;
  const how = {
    dataset: "a question of the prepared data",
    similar: `similar to “${m.matched_question}” (${(m.similarity * 100).toFixed(0)}%)`,
    fallback: `not recognised: scored against all ${r.valid_classes.length} classes`,
  }[m.source] || m.source;
  const qtype = r.question_type ? `${r.question_type}${m.attribute_type ? " / " + m.attribute_type : ""}` : "unknown type";
  $("answer-meta").textContent =
    `${qtype} · ${how} · ${r.timing.total_ms.toFixed(0)} ms (model ${r.timing.inference_ms.toFixed(0)} ms)`;
  const notes = $("notes");
  notes.replaceChildren(...r.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));

  const bars = $("bars");
  bars.replaceChildren();
  r.scores.forEach((s, i) => {
    const li = document.createElement("li");
    li.className = s.selected ? "selected" : "";
    if (i >= SHOW_BARS) li.hidden = true;
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: s.name, title: s.name });
    const track = Object.assign(document.createElement("span"), { className: "track" });
    const fill = Object.assign(document.createElement("span"), { className: "fill" });
    fill.style.width = `${(s.score * 100).toFixed(1)}%`;
    track.appendChild(fill);
    const value = Object.assign(document.createElement("span"), { className: "value", textContent: s.score.toFixed(3) });
    li.append(name, track, value);
    bars.appendChild(li);
  });
  const more = $("more");
  more.hidden = r.scores.length <= SHOW_BARS;
  more.textContent = `show all ${r.scores.length} options`;
  more.onclick = () => { [...bars.children].forEach((li) => { li.hidden = false; }); more.hidden = true; };
}

// ---------------------------------------------------------------- uploads
async function onUpload() {
  clearError();
  const files = [...$("upload").files];
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  if ($("upload-rate").value) form.append("rate", $("upload-rate").value);
  try {
    const blob = await api("/api/plot", { method: "POST", body: form });
    state.upload = files;
    state.example = null;
    $("plot1").src = URL.createObjectURL(blob);
    $("cap1").textContent = `uploaded: ${files.map((f) => f.name).join(", ")}`;
    $("fig2").hidden = true;
    $("ecg-meta").textContent = "questions now go to the uploaded ECG";
    $("findings-box").hidden = true;
    $("clear-upload").hidden = false;
    $("ecg1").disabled = $("ecg2").disabled = true;
  } catch (e) {
    showError(e.message);
  }
}
function clearUpload() {
  if (!state.upload) return;
  state.upload = null;
  $("upload").value = "";
  $("clear-upload").hidden = true;
  $("ecg1").disabled = $("ecg2").disabled = false;
  showPlots();
}
$("upload").addEventListener("change", onUpload);
$("upload-rate").addEventListener("change", () => { if (state.upload) onUpload(); });
$("clear-upload").onclick = clearUpload;

$("ecg1").addEventListener("change", () => { state.example = null; showPlots(); });
$("ecg2").addEventListener("change", () => { state.example = null; showPlots(); });
$("prev").onclick = () => loadPage(Math.max(0, state.offset - PAGE)).catch((e) => showError(e.message));
$("next").onclick = () => loadPage(state.offset + PAGE).catch((e) => showError(e.message));

(async () => {
  try {
    await Promise.all([loadInfo(), loadPage(0), loadExamples()]);
  } catch (e) {
    showError(e.message);
  }
  document.body.dataset.ready = "1";
})();
