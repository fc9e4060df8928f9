// The page: search, results grid, and the attention of a chosen (image, caption) pair over the image.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let current = null;  // the attention JSON shown in the detail panel

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function direction() {
  return document.querySelector("input[name=direction]:checked").value;
}

async function search(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  const params = new URLSearchParams({ k: $("k").value, mode: $("mode").value });
  params.set(direction(), query);
  $("message").textContent = "searching...";
  try {
    const result = await getJson("/api/search?" + params);
    $("message").textContent = `${result.hits.length} results (${result.mode})`;
    showResults(result);
  } catch (error) {
    $("message").textContent = error.message;
  }
}

function showResults(result) {
  const box = $("results");
  box.replaceChildren();
  box.classList.toggle("captions", result.kind === "image");
  for (const hit of result.hits) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = result.kind === "text" ? "hit" : "hit caption-hit";
    button.dataset.image = result.kind === "text" ? hit.image_id : result.query;
    if (result.kind === "text") {
      button.append(thumbnail(hit), `#${hit.rank} ${hit.image_id} · ${hit.score.toFixed(3)}`);
      button.addEventListener("click", () => choose(button, hit.image_id, result.query));
    } else {
      button.textContent = `#${hit.rank} ${hit.score.toFixed(3)} — ${hit.caption}` +
        (hit.image_id ? ` (image ${hit.image_id})` : "");
      button.addEventListener("click", () => choose(button, result.query, hit.caption));
    }
    box.append(button);
  }
}

function thumbnail(hit) {
  if (!hit.image_url) {
    const placeholder = document.createElement("span");
    placeholder.className = "placeholder";
    return placeholder;
  }
  const image = document.createElement("img");
  image.src = hit.image_url;
  image.alt = `image ${hit.image_id}`;
  image.onerror = () => image.replaceWith(Object.assign(document.createElement("span"), { className: "placeholder" }));
  return image;
}

async function choose(button, imageId, caption) {
  document.querySelectorAll(".hit.chosen").forEach((b) => b.classList.remove("chosen"));
  button.classList.add("chosen");
  try {
    const params = new URLSearchParams({ image: imageId, text: caption });
    showAttention(await getJson("/api/attention?" + params));
  } catch (error) {
    $("message").textContent = error.message;
  }
}

function showAttention(attention) {
  current = attention;
  const [height, width] = attention.image_hw;
  $("detail").hidden = false;
  $("detail-title").textContent = `${attention.image_id}: "${attention.caption}"`;
  $("figure").style.aspectRatio = `${width} / ${height}`;
  const image = $("detail-image");
  image.hidden = false;
  image.onerror = () => { image.hidden = true; };
  image.src = `/api/images/${encodeURIComponent(attention.image_id)}`;
  image.alt = `image ${attention.image_id}`;
  drawBoxes(attention, width, height);
  drawWords(attention);
  $("score").textContent = `score ${attention.score.toFixed(4)} (${attention.cross_attn} model)`;
}

function drawBoxes(attention, width, height) {
  const overlay = $("overlay");
  overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
  overlay.replaceChildren();
  overlay.dataset.word = "";
  attention.regions.forEach((region, index) => {
    const [x1, y1, x2, y2] = region.box;
    const rect = document.createElementNS(SVG, "rect");
    for (const [name, value] of [["x", x1], ["y", y1], ["width", x2 - x1], ["height", y2 - y1]]) {
      rect.setAttribute(name, value);
    }
    rect.setAttribute("fill-opacity", "0");
    rect.dataset.region = index;
    overlay.append(rect);
  });
}

function drawWords(attention) {
  const words = $("words");
  words.replaceChildren();
  attention.words.forEach((word, index) => {
    if (word.special) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "word";
    button.textContent = word.word;
    button.dataset.word = index;
    for (const on of ["mouseenter", "focus"]) button.addEventListener(on, () => lightWord(index, button));
    for (const off of ["mouseleave", "blur"]) button.addEventListener(off, () => lightWord(null, null));
    words.append(button);
  });
}

// Each region's fill follows the word's attention weight on it (scaled by the largest); the best is outlined.
function lightWord(index, button) {
  document.querySelectorAll(".word.active").forEach((b) => b.classList.remove("active"));
  const rects = $("overlay").querySelectorAll("rect");
  $("overlay").dataset.word = index === null ? "" : String(index);
  if (index === null) {
    rects.forEach((rect) => { rect.setAttribute("fill-opacity", "0"); rect.classList.remove("best"); });
    return;
  }
  button.classList.add("active");
  const weights = current.word_to_region[index];
  const largest = Math.max(...weights, 1e-12);
  const best = weights.indexOf(Math.max(...weights));
  rects.forEach((rect, region) => {
    rect.setAttribute("fill-opacity", (0.7 * weights[region] / largest).toFixed(3));
    rect.classList.toggle("best", region === best);
  });
}

function captionsOfImage() {
  if (!current) return;
  document.querySelector("input[name=direction][value=image]").checked = true;
  directionChanged();
  $("query").value = current.image_id;
  $("search-form").requestSubmit();
}

function directionChanged() {
  $("query-label").textContent = direction() === "text" ? "Caption" : "Image id";
}

async function health() {
  try {
    const status = await getJson("/healthz");
    $("health").textContent = `${status.images} images, ${status.captions} captions`;
  } catch (error) {
    $("health").textContent = "server unreachable";
  }
}

$("search-form").addEventListener("submit", search);
$("captions-of-image").addEventListener("click", captionsOfImage);
document.querySelectorAll("input[name=direction]").forEach((r) => r.addEventListener("change", directionChanged));
health();
