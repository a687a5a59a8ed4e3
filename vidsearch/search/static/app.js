// vidsearch search page. Plain JavaScript, no build step, no external requests.
// The URL's query string is the state (q or like, filters, page): a search can be shared, and
// back/forward replay it. Every text from the library is set with textContent, never as HTML.
"use strict";

const PAGE_SIZE = 24;
const FILTERS = ["folder", "min_duration", "max_duration", "date_from", "date_to", "from", "to", "per_video"];
const MODALITIES = ["visual", "speech", "screen"];
// Labels of the badges that say which modality found a hit (speech hits from subtitles say so).
const BADGES = { visual: "Picture", speech: "Speech", subtitle: "Subtitles", screen: "On screen" };
// A hit found by its words may last a fraction of a second (one matched word): play at least this
// long from its first matched word, so the words are heard in context.
const MIN_TEXT_PLAY_S = 3;
const $ = (id) => document.getElementById(id);

let available = MODALITIES.slice();  // what the library can be searched in (/api/status)

let inflight = null;       // AbortController of the running search
let moment = null;         // {start, end, done} of the playing hit
let playingCard = null;
const clipLabels = new Map();  // clip id -> "name at start–end" (for "more like this")

function readState() {
  const p = new URLSearchParams(location.search);
  const s = { q: p.get("q") || "", like: p.get("like") || "", in: p.get("in") || "",
              page: Math.max(1, parseInt(p.get("page") || "1", 10) || 1) };
  for (const f of FILTERS) s[f] = p.get(f) || "";
  return s;
}

function stateUrl(s) {
  const p = new URLSearchParams();
  if (s.q) p.set("q", s.q);           // kept with like=, so "back to text search" restores it
  if (s.like) p.set("like", s.like);
  if (s.in) p.set("in", s.in);
  for (const f of FILTERS) if (s[f]) p.set(f, s[f]);
  if (s.page > 1) p.set("page", String(s.page));
  const qs = p.toString();
  return qs ? `/?${qs}` : "/";
}

// The modalities ticked (among those the library has); "" when all of them are (the default).
function checkedModalities() {
  const on = available.filter((m) => $(`in-${m}`).checked);
  return on.length === available.length ? "" : on.join(",");
}

function formToState() {
  const s = { q: $("q").value.trim(), like: "", in: checkedModalities(), page: 1 };
  for (const f of FILTERS) s[f] = $(f).value.trim();
  return s;
}

function fillForm(s) {
  $("q").value = s.q;
  for (const f of FILTERS) $(f).value = s[f];
  const wanted = s.in ? s.in.split(",") : null;
  for (const m of MODALITIES) $(`in-${m}`).checked = !wanted || wanted.includes(m);
  if (FILTERS.some((f) => s[f]) || s.in) $("filters").open = true;
}

function navigate(s) {
  history.pushState(null, "", stateUrl(s));
  run(s);
}

function setMessage(text, isError = false) {
  const m = $("message");
  m.textContent = text;
  m.classList.toggle("error", isError);
}

// "dog.mp4 at 00:00:04–00:00:06" for a clip id (the API's clip record), or null.
async function clipLabel(id) {
  if (clipLabels.has(id)) return clipLabels.get(id);
  try {
    const r = await fetch(`/api/clips/${encodeURIComponent(id)}`);
    if (!r.ok) return null;
    const c = await r.json();
    const label = `${c.name} at ${c.start}–${c.end}`;
    clipLabels.set(id, label);
    return label;
  } catch (e) {
    return null;
  }
}

async function run(s) {
  fillForm(s);
  const likeBanner = $("like-banner");
  likeBanner.hidden = !s.like;
  const likeLabel = s.like ? clipLabel(s.like) : Promise.resolve(null);
  if (s.like) {
    $("like-text").textContent = "Moments like the chosen clip";
    likeLabel.then((label) => {
      if (label && readState().like === s.like) $("like-text").textContent = `Moments like ${label}`;
    });
  }
  if (!s.q && !s.like) {
    $("grid").replaceChildren();
    $("pager").hidden = true;
    setMessage("");
    document.title = "vidsearch";
    return;
  }
  const api = new URLSearchParams();
  if (s.like) api.set("like", s.like); else api.set("q", s.q);
  if (s.in && !s.like) api.set("in", s.in);  // an example clip is searched by its pictures
  for (const f of FILTERS) if (s[f]) api.set(f, s[f]);
  api.set("k", String(PAGE_SIZE));
  api.set("offset", String((s.page - 1) * PAGE_SIZE));
  if (inflight) inflight.abort();
  inflight = new AbortController();
  setMessage("Searching…");
  document.title = `${s.like ? "More like a clip" : s.q} – vidsearch`;
  let body;
  try {
    const resp = await fetch(`/api/search?${api}`, { signal: inflight.signal });
    body = await resp.json();
    if (!resp.ok) {
      render(s, null);
      setMessage(`Search failed: ${body.error || resp.statusText}`, true);
      return;
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    render(s, null);
    setMessage(`Search failed: ${e.message}`, true);
    return;
  }
  const label = await likeLabel;
  if (s.like && label) document.title = `Like ${label} – vidsearch`;
  render(s, body, label);
}

function render(s, body, likeLabel = null) {
  const grid = $("grid");
  grid.replaceChildren();
  playingCard = null;
  if (!body) { $("pager").hidden = true; return; }
  const first = body.offset + 1;
  const n = body.hits.length;
  const what = s.like ? `like ${likeLabel || "the chosen clip"}` : `for “${s.q}”`;
  const ms = body.timings_ms && body.timings_ms.total != null ? ` in ${Math.round(body.timings_ms.total)} ms` : "";
  setMessage(n ? `Results ${first}–${first + n - 1} ${what}${ms}` : `No results ${what}`);
  for (const h of body.hits) grid.appendChild(card(h, s));
  $("pager").hidden = !(s.page > 1 || body.has_more);
  $("prev").disabled = s.page <= 1;
  $("next").disabled = !body.has_more;
  $("page-label").textContent = `Page ${s.page}`;
  for (const w of body.warnings || []) console.warn("vidsearch:", w);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// Text that may wrap only after the given separators (and inside a word only when a piece is
// wider than the card): "/media/pets/dog.mp4" breaks at "/", never as "/me|dia".
function breakable(cls, text, seps) {
  const e = el("div", cls);
  let piece = "";
  for (const ch of text) {
    piece += ch;
    if (seps.includes(ch)) {
      e.append(piece, document.createElement("wbr"));
      piece = "";
    }
  }
  if (piece) e.append(piece);
  return e;
}

// The snippet of a hit found by its words: text nodes and <mark> elements, never HTML (the text
// comes from subtitle files and speech). Marks are offsets in code points (Array.from).
function snippetNode(sn) {
  const p = el("p", "snippet");
  const chars = Array.from(sn.text);
  let pos = 0;
  for (const [a, b] of sn.marks) {
    if (a < pos || b > chars.length || b < a) continue;  // malformed: keep the plain text
    if (a > pos) p.append(chars.slice(pos, a).join(""));
    p.append(el("mark", null, chars.slice(a, b).join("")));
    pos = b;
  }
  if (pos < chars.length) p.append(chars.slice(pos).join(""));
  return p;
}

function badgeLabel(m, h) {
  if (m === "speech" && h.snippet && h.snippet.source === "subtitle") return BADGES.subtitle;
  return BADGES[m] || m;
}

// Each modality's own score, never compared with each other: "score 0.312" for a picture-only
// hit (its cosine, also in a fused list, where h.score is the fusion score), else
// "speech 7.4 · visual 0.312".
function scoresText(h) {
  const mods = h.modalities || ["visual"];
  const own = h.scores || {};
  if (mods.length === 1 && mods[0] === "visual") return `score ${(own.visual ?? h.score).toFixed(3)}`;
  return mods.filter((m) => own[m] != null)
    .map((m) => `${m} ${m === "visual" ? own[m].toFixed(3) : own[m].toPrecision(3)}`).join(" · ");
}

function card(h, s) {
  const li = el("li", "hit");
  li.dataset.clipId = h.clip_id;
  li.dataset.start = h.start_s;
  li.dataset.end = h.end_s;
  li.dataset.play = h.play_s;
  li.dataset.modalities = (h.modalities || ["visual"]).join(",");
  const range = `${h.start}–${h.end}`;
  clipLabels.set(String(h.clip_id), `${h.name} at ${range}`);
  const thumb = el("button", "thumb");
  thumb.type = "button";
  thumb.setAttribute("aria-label", `Play ${h.name} from ${h.start} to ${h.end}`);
  const img = el("img");
  img.src = h.thumbnail_url;
  img.alt = `Frame of ${h.name} at ${h.start}`;
  img.loading = "lazy";
  img.decoding = "async";
  img.addEventListener("error", () => { img.alt = `No thumbnail for ${h.name} at ${h.start}`; });
  thumb.append(img);
  thumb.addEventListener("click", () => play(h, li));
  const info = el("div", "info");
  const name = breakable("name", h.name, "_-. ");
  name.title = h.path;
  const meta = el("div", "meta");
  meta.append(el("span", "range", range), el("span", "score", scoresText(h)));
  const badges = el("ul", "badges");
  badges.setAttribute("aria-label", "Found in");
  for (const m of h.modalities || ["visual"]) badges.append(el("li", `badge ${m}`, badgeLabel(m, h)));
  const folder = breakable("folder", h.folder, "/\\");
  const more = el("button", "more", "More like this");
  more.type = "button";
  more.setAttribute("aria-label", `More like this: ${h.name} at ${h.start}`);
  more.addEventListener("click", () => {
    const next = { ...s, like: h.clip_id, page: 1 };
    navigate(next);
    $("results").focus();
  });
  info.append(name, meta, badges);
  if (h.snippet) info.append(snippetNode(h.snippet));
  info.append(folder, more);
  li.append(thumb, info);
  return li;
}

function play(h, li) {
  const v = $("video");
  $("player").hidden = false;
  $("player-title").textContent = `${h.name}, ${h.start}–${h.end}`;
  if (playingCard) playingCard.classList.remove("playing");
  playingCard = li;
  li.classList.add("playing");
  // A hit found by what is said plays from its first matched word (play_s).
  const start = h.play_s != null ? h.play_s : h.start_s;
  const textOnly = !(h.modalities || ["visual"]).includes("visual");
  moment = { start, end: textOnly ? Math.max(h.end_s, start + MIN_TEXT_PLAY_S) : h.end_s, done: false };
  v.dataset.start = h.start_s;
  v.dataset.end = h.end_s;
  v.dataset.clipId = h.clip_id;
  const seekAndPlay = () => {
    v.currentTime = moment.start;
    v.play().catch(() => { /* autoplay refused: the controls are there */ });
  };
  const url = new URL(h.video_url, location.href).href;
  if (v.src !== url) {
    v.src = url;
    v.addEventListener("loadedmetadata", seekAndPlay, { once: true });
    v.load();
  } else if (v.readyState >= 1) {
    seekAndPlay();
  } else {
    v.addEventListener("loadedmetadata", seekAndPlay, { once: true });
  }
  $("player").scrollIntoView({ block: "nearest" });
  v.focus({ preventScroll: true });
}

function onTimeUpdate() {
  const v = $("video");
  if (!moment || moment.done) return;
  // Stop (or loop) at the end of the moment; afterwards the user may play on freely.
  if (v.currentTime >= moment.end - 0.05) {
    if ($("loop").checked) {
      v.currentTime = moment.start;
    } else {
      v.pause();
      moment.done = true;
      // timeupdate fires only every ~250 ms of media time (more at a faster playbackRate):
      // land exactly on the moment's end instead of wherever the last event left us.
      if (v.currentTime > moment.end) v.currentTime = moment.end;
    }
  }
}

// Check the moment's end every animation frame while it plays, not only at timeupdate.
function watchMoment() {
  const v = $("video");
  const tick = () => {
    if (!moment || moment.done || v.paused) return;
    onTimeUpdate();
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
}

function closePlayer() {
  const v = $("video");
  v.pause();
  v.removeAttribute("src");
  v.load();
  $("player").hidden = true;
  moment = null;
  if (playingCard) {
    playingCard.classList.remove("playing");
    const btn = playingCard.querySelector(".thumb");
    playingCard = null;
    if (btn) btn.focus();
  }
}

async function loadStatus() {
  try {
    const r = await fetch("/api/status");
    const st = await r.json();
    if (!r.ok) return;
    const vids = Object.entries(st.videos || {}).filter(([k]) => k === "done" || k === "partial")
      .reduce((a, [, n]) => a + n, 0);
    // An example the library's model can answer (the demo world's captions, recent searches),
    // instead of a fixed one that may mean nothing to it.
    if (st.examples && st.examples.length) $("q").placeholder = `e.g. ${st.examples[0]}`;
    // Offer only the modalities the library has (a library without transcripts: pictures only).
    if (st.modalities && st.modalities.length) {
      available = MODALITIES.filter((m) => st.modalities.includes(m));
      for (const m of MODALITIES) $(`in-${m}`).closest("label").hidden = !available.includes(m);
      $("in-fields").hidden = available.length < 2;
    }
    let text = st.ready ? `${st.clips} clips in ${vids} videos` : "No clips yet";
    if (st.model) text += ` · ${st.model.name}${st.model.is_test_model ? " (test model)" : ""}`;
    if (st.writer) text += " · ingest running";
    $("library-status").textContent = text;
  } catch (e) { /* the status line is optional */ }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const s = formToState();
    if (!s.q) { setMessage("Type what to look for.", true); $("q").focus(); return; }
    if (!available.some((m) => $(`in-${m}`).checked)) {
      setMessage("Tick at least one of pictures, speech or text on screen.", true);
      return;
    }
    navigate(s);
  });
  $("like-clear").addEventListener("click", () => { navigate({ ...readState(), like: "", page: 1 }); $("q").focus(); });
  $("prev").addEventListener("click", () => { const s = readState(); s.page -= 1; navigate(s); $("results").focus(); });
  $("next").addEventListener("click", () => { const s = readState(); s.page += 1; navigate(s); $("results").focus(); });
  $("video").addEventListener("timeupdate", onTimeUpdate);
  $("video").addEventListener("play", watchMoment);
  $("replay").addEventListener("click", () => {
    if (!moment) return;
    moment.done = false;
    const v = $("video");
    v.currentTime = moment.start;
    v.play().catch(() => {});
  });
  $("close-player").addEventListener("click", closePlayer);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !$("player").hidden) closePlayer(); });
  window.addEventListener("popstate", () => run(readState()));
  loadStatus();
  run(readState());
});
