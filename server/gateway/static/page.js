// The demo page: list the pipelines, classify the chosen images through the public API (maps=true), draw each
// image with its class score map overlaid. Plain DOM code, no dependencies; served by the gateway under a CSP
// that allows this file and nothing inline.
"use strict";

const MAX_PIXELS = 640;  // longest side of the drawn image; the map is drawn at the same scale
const PARALLEL = 4;      // requests in flight for a batch (the gateway queues or refuses the rest like any client's)

const $ = (selector, root = document) => root.querySelector(selector);

function authHeaders() {
  const key = $("#api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The gateway's error body is {"error": {"code", "message"}}; anything else (a proxy's page) is reported as is.
async function errorText(response) {
  let detail = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error) {
      detail = `${response.status} ${body.error.code}: ${body.error.message}`;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  if (response.status === 401) {
    detail += " (check the API key)";
  }
  return detail;
}

function showPageError(message) {
  const box = $("#page-error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadPipelines() {
  const select = $("#pipeline");
  let response;
  try {
    response = await fetch("/v1/pipelines", { headers: authHeaders() });
  } catch (_) {
    showPageError("The gateway could not be reached.");
    return;
  }
  if (!response.ok) {
    showPageError(`Listing the pipelines failed: ${await errorText(response)}`);
    return;
  }
  showPageError("");
  const body = await response.json();
  const previous = select.value;
  select.replaceChildren();
  for (const pipeline of body.pipelines) {
    const option = new Option(`${pipeline.name}: ${pipeline.description}${pipeline.maps ? "" : " (no maps)"}`,
                              pipeline.name);
    option.dataset.maps = pipeline.maps ? "1" : "";
    select.append(option);
  }
  select.value = [...select.options].some((o) => o.value === previous) ? previous : (body.default || "");
}

// Heat colour: light yellow (low) to dark red (high); opacity grows with the value, so a cold cell barely tints.
function heatColour(value) {
  const v = Math.min(1, Math.max(0, value));
  const green = Math.round(220 * (1 - v));
  return `rgba(${Math.round(255 - 90 * v)}, ${green}, 0, ${(0.12 + 0.7 * v).toFixed(3)})`;
}

function drawMap(card) {
  const state = card.mapState;
  if (!state) {
    return;
  }
  const canvas = $(".heat-layer", card);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const maps = state.maps;
  const viewIndex = $(".view-select", card).value;
  const grid = viewIndex === "fused" ? maps.fused : maps.views[Number(viewIndex)];
  const plane = grid.probs[Number($(".class-select", card).value)];
  const [imageWidth, imageHeight] = maps.image_size;
  const scaleX = (canvas.width / imageWidth) * (imageWidth / grid.rescaled_size[0]);
  const scaleY = (canvas.height / imageHeight) * (imageHeight / grid.rescaled_size[1]);
  // Each cell scores the window x window square at origin + stride * (column, row); it is drawn as the
  // stride-sized tile around that window's centre, so neighbouring cells tile the image without overlapping.
  for (let row = 0; row < grid.size[1]; row += 1) {
    for (let column = 0; column < grid.size[0]; column += 1) {
      const centreX = grid.origin[0] + maps.stride * column + grid.window / 2;
      const centreY = grid.origin[1] + maps.stride * row + grid.window / 2;
      context.fillStyle = heatColour(plane[row][column]);
      context.fillRect((centreX - maps.stride / 2) * scaleX, (centreY - maps.stride / 2) * scaleY,
                       maps.stride * scaleX, maps.stride * scaleY);
    }
  }
  canvas.dataset.drawn = `${viewIndex}:${$(".class-select", card).value}`;
}

function showPredictions(card, result) {
  const list = $(".predictions", card);
  list.replaceChildren();
  for (const prediction of result.predictions) {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = prediction.label;
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = prediction.score;
    meter.setAttribute("aria-label", `score of ${prediction.label}`);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = prediction.score.toFixed(3);
    item.append(label, meter, score);
    list.append(item);
  }
}

function showMaps(card, result) {
  const classSelect = $(".class-select", card);
  const viewSelect = $(".view-select", card);
  const controls = $(".map-controls", card);
  if (!result.maps) {
    controls.hidden = true;
    return;
  }
  classSelect.replaceChildren(...result.predictions.map((p, i) => new Option(p.label, String(i))));
  const views = result.maps.views.map((view, i) => new Option(
    `${view.member} Q=${view.scale}${view.flipped ? " mirrored" : ""}`, String(i)));
  viewSelect.replaceChildren(new Option("fused (all views)", "fused"), ...views);
  card.mapState = { maps: result.maps };
  classSelect.addEventListener("change", () => drawMap(card));
  viewSelect.addEventListener("change", () => drawMap(card));
  drawMap(card);
}

async function drawImage(card, file) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  const shrink = Math.min(1, MAX_PIXELS / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * shrink));
  const height = Math.max(1, Math.round(bitmap.height * shrink));
  for (const canvas of card.querySelectorAll("canvas")) {
    canvas.width = width;
    canvas.height = height;
  }
  $(".image-layer", card).getContext("2d").drawImage(bitmap, 0, 0, width, height);
  $(".image-layer", card).setAttribute("aria-label", `the image ${file.name}`);
  $(".image-layer", card).setAttribute("role", "img");
  bitmap.close();
}

function newCard(file) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  $(".card-title", card).textContent = file.name;
  $(".latency", card).textContent = "waiting…";
  $(".map-controls", card).hidden = true;
  $("#results").append(card);
  return card;
}

function failCard(card, message) {
  card.classList.add("failed");
  $(".latency", card).textContent = "";
  $(".picture", card).hidden = true;
  $(".map-controls", card).hidden = true;
  const box = $(".error", card);
  box.textContent = message;
  box.hidden = false;
}

async function classifyOne(card, file, pipeline, topK, withMaps) {
  const form = new FormData();
  form.append("file", file, file.name);
  const query = new URLSearchParams({ pipeline, top_k: String(topK) });
  if (withMaps) {
    query.set("maps", "true");
  }
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/v1/classify?${query}`, { method: "POST", body: form, headers: authHeaders() });
  } catch (_) {
    failCard(card, "The gateway could not be reached.");
    return;
  }
  if (!response.ok) {
    failCard(card, await errorText(response));
    return;
  }
  const result = await response.json();
  const elapsed = performance.now() - started;
  $(".latency", card).textContent =
    `${Math.round(elapsed)} ms in the browser, ${Math.round(result.timing_ms)} ms in the gateway`;
  showPredictions(card, result);
  try {
    await drawImage(card, file);
  } catch (_) {
    $(".picture", card).hidden = true;  // the server read it, this browser cannot: show the numbers alone
  }
  $(".map-controls", card).hidden = false;
  showMaps(card, result);
  card.classList.add("done");
}

async function classifyAll(files) {
  const pipeline = $("#pipeline").value;
  if (!pipeline) {
    showPageError("No pipeline to use: the pipeline list could not be loaded.");
    return;
  }
  const topK = Math.min(10, Math.max(1, Number($("#top-k").value) || 3));
  const withMaps = Boolean($("#pipeline").selectedOptions[0]?.dataset.maps);
  const button = $("#classify");
  button.disabled = true;
  $("#results").replaceChildren();
  $("#status").textContent = `classifying ${files.length} image${files.length === 1 ? "" : "s"}…`;
  const queue = files.map((file) => [newCard(file), file]);
  const worker = async () => {
    while (queue.length) {
      const [card, file] = queue.shift();
      await classifyOne(card, file, pipeline, topK, withMaps);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PARALLEL, files.length) }, worker));
  const failed = document.querySelectorAll("#results .failed").length;
  $("#status").textContent = `done: ${files.length - failed} classified, ${failed} failed`;
  button.disabled = false;
}

function start() {
  const input = $("#files");
  const zone = $("#drop-zone");
  $("#controls").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) {
      showPageError("Choose or drop at least one image first.");
      return;
    }
    showPageError("");
    classifyAll([...input.files]);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      showPageError("");
      classifyAll([...input.files]);
    }
  });
  $("#api-key").addEventListener("change", loadPipelines);
  loadPipelines();
}

document.addEventListener("DOMContentLoaded", start);
