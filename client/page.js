"use strict";
// The page of `make page`. Each photo dropped is uploaded to client/page.py (POST /tag), which adds the key and
// passes it on to TorchServe; the answer is drawn on the photo. Text from an answer (labels, messages) is only
// ever set as textContent or drawn with fillText: nothing of it is read as HTML.

const TAG_PATH = "/tag";
const UPLOADS_AT_ONCE = 4; // TorchServe batches the uploads that arrive together
const MAX_CANVAS_SIDE = 1280; // a photo is drawn at most this large, its boxes scaled with it

// {model, max_request_size} of the TorchServe behind the page.
const settings = fetch("/settings").then((answer) => answer.json());
let waiting = []; // uploads not started yet: at most UPLOADS_AT_ONCE run at once
let running = 0;

// ---- Label colours: the same as client/draw.py's label_color (python -m client.tag --draw) ----

const CRC_TABLE = Array.from({ length: 256 }, (_, byte) => {
  let crc = byte;
  for (let bit = 0; bit < 8; bit += 1) crc = crc & 1 ? 0xedb88320 ^ (crc >>> 1) : crc >>> 1;
  return crc >>> 0;
});

function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// Python's round(): halves go to the even neighbour.
function roundHalfEven(value) {
  const floor = Math.floor(value);
  const rest = value - floor;
  return rest > 0.5 || (rest === 0.5 && floor % 2 === 1) ? floor + 1 : floor;
}

// Pillow's HSV to RGB (hsv2rgb in libImaging/Convert.c), its single-precision steps included: h, s, v in 0-255.
function pillowHsvToRgb(h, s, v) {
  const sector = Math.floor((h * 6) / 255);
  const f = Math.fround((h * 6) / 255 - sector);
  const fs = Math.fround(s / 255);
  const p = Math.round(v * (1 - fs));
  const q = Math.round(v * (1 - Math.fround(fs * f)));
  const t = Math.round(v * (1 - fs * (1 - f)));
  return [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][sector % 6];
}

// A dark colour that is the same for a label on every photo (readable under white text).
function labelColor(label) {
  const hue = crc32(new TextEncoder().encode(label)) % 360;
  return pillowHsvToRgb(roundHalfEven((hue * 255) / 360), 220, 170);
}

function cssColor([red, green, blue]) {
  return `rgb(${red}, ${green}, ${blue})`;
}

// ---- Answers ----

// One line for a refusal, as client/tag.py's describe_refusal writes it: the tagger's (and this page's server's)
// {"error", "message"}, or TorchServe's own {"code", "type", "message"}.
function describeError(status, text) {
  let content = null;
  try {
    content = JSON.parse(text);
  } catch {
    // not JSON: described below
  }
  if (content !== null && typeof content === "object" && !Array.isArray(content)) {
    if ("error" in content) return `HTTP ${status} ${content.error}: ${content.message ?? ""}`;
    if ("type" in content) {
      const hint = content.type === "InvalidKeyException"
        ? " (the inference key is wrong or expired: `make serve` renews it, then retry)" : "";
      return `HTTP ${status} ${content.type}: ${content.message ?? ""}${hint}`;
    }
  }
  if (status === 413) return "HTTP 413: the file is larger than the server's max_request_size (config.properties)";
  const line = text.split(/\s+/).join(" ").trim();
  return `HTTP ${status}: ${line.length > 200 ? `${line.slice(0, 197)}...` : line || "empty answer"}`;
}

function newView(file) {
  const section = document.getElementById("photo").content.firstElementChild.cloneNode(true);
  const view = {
    section,
    status: section.querySelector(".status"),
    tags: section.querySelector(".tags"),
    canvas: section.querySelector("canvas"),
    detections: section.querySelector(".detections"),
  };
  section.querySelector(".name").textContent = file.name;
  document.getElementById("photos").append(section);
  return view;
}

function fail(view, message) {
  view.status.textContent = message;
  view.section.dataset.state = "failed";
}

function listItem(text, color) {
  const item = document.createElement("li");
  item.textContent = text;
  if (color) item.style.backgroundColor = color;
  return item;
}

function showTags(view, answer) {
  const { tags, detections } = answer;
  const counted = (count, one, many) => `${count} ${count === 1 ? one : many}`;
  view.status.textContent = tags.length
    ? `${counted(tags.length, "tag", "tags")}, ${counted(detections.length, "box", "boxes")}`
    : "no tags above the threshold";
  view.tags.replaceChildren(...tags.map((tag) => listItem(tag, cssColor(labelColor(tag)))));
  view.detections.replaceChildren(...detections.map((detection) => listItem(
    `${detection.label} ${detection.score.toFixed(2)} [${detection.box.map(Math.round).join(", ")}]`)));
}

// The photo with one labelled box per detection, drawn as client/draw.py draws them. The boxes are in the pixels of
// the upload after its EXIF rotation (answer.width x answer.height), which the bitmap is decoded with too.
function drawAnswer(canvas, bitmap, answer) {
  const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(bitmap.width, bitmap.height));
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const scaleX = canvas.width / answer.width;
  const scaleY = canvas.height / answer.height;
  const line = Math.max(2, Math.round(Math.min(canvas.width, canvas.height) / 200));
  const fontSize = Math.max(12, Math.floor(Math.min(canvas.width, canvas.height) / 30));
  context.font = `${fontSize}px sans-serif`;
  context.textBaseline = "top";
  context.lineWidth = line;
  for (const detection of answer.detections) {
    const color = cssColor(labelColor(detection.label));
    const [x1, y1, x2, y2] = detection.box;
    const [left, top] = [x1 * scaleX, y1 * scaleY];
    context.strokeStyle = color;
    context.strokeRect(left, top, (x2 - x1) * scaleX, (y2 - y1) * scaleY);
    const text = `${detection.label} ${detection.score.toFixed(2)}`;
    const width = context.measureText(text).width + 2 * line;
    const height = fontSize + 2 * line;
    // The label sits on the box's top edge, or inside the box when the edge is at the photo's top, and is
    // moved left where it would pass the photo's right side.
    const labelTop = top >= height ? top - height : top;
    const labelLeft = Math.max(0, Math.min(left, canvas.width - width));
    context.fillStyle = color;
    context.fillRect(labelLeft, labelTop, width, height);
    context.fillStyle = "#fff";
    context.fillText(text, labelLeft + line, labelTop + line);
  }
}

async function tagPhoto(file, view) {
  const limit = await settings.then((found) => found.max_request_size, () => Infinity);
  if (file.size > limit) {
    return fail(view, `the file is ${file.size.toLocaleString("en")} bytes, more than the server's `
      + `max_request_size of ${limit.toLocaleString("en")} (config.properties)`);
  }
  const body = new FormData();
  body.append("data", file, file.name);
  const headers = { "X-Tag-Format": "dict" };
  const threshold = document.getElementById("threshold").value.trim();
  if (threshold !== "") headers["X-Score-Threshold"] = threshold;
  const bitmap = createImageBitmap(file, { imageOrientation: "from-image" });
  bitmap.catch(() => {}); // a file that is no image is reported by the server's answer
  let answer;
  let text;
  try {
    answer = await fetch(TAG_PATH, { method: "POST", body, headers });
    text = await answer.text();
  } catch (error) {
    return fail(view, `the page's server did not answer (${error.message}): is \`make page\` still running?`);
  }
  if (!answer.ok) return fail(view, describeError(answer.status, text));
  let result;
  try {
    result = JSON.parse(text);
  } catch {
    return fail(view, `the server answered ${answer.status} with a body that is not JSON`);
  }
  showTags(view, result);
  try {
    drawAnswer(view.canvas, await bitmap, result);
  } catch (error) {
    view.status.textContent += ` (this browser cannot show the photo: ${error.message})`;
  }
  view.section.dataset.state = "done";
}

function startWaiting() {
  while (running < UPLOADS_AT_ONCE && waiting.length) {
    const upload = waiting.shift();
    running += 1;
    upload().finally(() => {
      running -= 1;
      startWaiting();
    });
  }
}

function addFiles(files) {
  for (const file of files) {
    const view = newView(file);
    waiting.push(() => tagPhoto(file, view));
  }
  startWaiting();
}

// ---- The page ----

const drop = document.getElementById("drop");
const chooser = document.getElementById("files");
chooser.addEventListener("change", () => {
  addFiles(chooser.files);
  chooser.value = ""; // the same photos may be chosen again
});
// Photos may be dropped anywhere on the page (else the browser would open a file dropped beside the zone).
document.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) drop.classList.remove("over");
});
document.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  addFiles(event.dataTransfer.files);
});
document.getElementById("clear").addEventListener("click", () => {
  waiting = [];
  document.getElementById("photos").replaceChildren();
});
settings.then((found) => {
  const mib = (found.max_request_size / 2 ** 20).toFixed(0);
  document.getElementById("served").textContent =
    `Photos are tagged by the model ${found.model} of make serve's TorchServe (files up to ${mib} MiB).`;
}, () => {});
