// The annotation page: one image at a time, a class, a confidence, and a painted region.
//
// The painted region is a Uint8Array at the image's own pixel resolution (not the screen's): a
// brush or eraser stroke sets every pixel whose centre lies within half the brush size of the
// stroke's path, a box sets every pixel whose centre lies inside it. The screen only shows that
// mask (a canvas of the image's size, scaled with the image for zoom and pan), so what is stored
// does not depend on the zoom level. Time on an image runs from its display to the submission.
"use strict";

(() => {
  // undo steps are copies of the mask: up to 20, fewer for very large images (about 256 MB at most)
  const UNDO_BYTES = 256 * 2 ** 20, MAX_UNDO = 20, MIN_UNDO = 3;
  const COLOR = [230, 40, 30];
  const $ = (id) => document.getElementById(id);
  const viewport = $("viewport"), image = $("image"), canvas = $("mask"), preview = $("box-preview");
  const ctx = canvas.getContext("2d");
  const s = {
    info: null, position: null, width: 0, height: 0, mask: null, overlay: null, undo: [],
    tool: "brush", label: null, scale: 1, tx: 0, ty: 0, shownAt: 0, busy: false, action: null, space: false,
  };

  async function api(path, options = {}) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store", ...options });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
    return body;
  }

  function message(text) { $("message").textContent = text || ""; }

  // --- session -----------------------------------------------------------------------------------
  async function start() {
    const info = await api("/api/state");
    s.width = info.width; s.height = info.height;
    $("who").textContent = `${info.annotator} on ${info.dataset}${info.split ? ` (${info.split})` : ""}`;
    const classes = $("classes");
    info.classes.forEach((name, i) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      Object.assign(input, { type: "radio", name: "class", value: name, id: `class-${i}` });
      input.addEventListener("change", () => { s.label = name; });
      const text = document.createElement("span");
      text.textContent = i < 9 ? `${i + 1}. ${name}` : name;
      label.append(input, " ", text);
      classes.append(label);
    });
    canvas.width = s.width; canvas.height = s.height;
    s.overlay = ctx.createImageData(s.width, s.height);
    const size = $("size");
    size.max = String(Math.max(16, Math.round(Math.min(s.width, s.height) / 4)));
    updateSize();
    setTool("brush");
    show(info);
  }

  function show(info) {
    s.info = info;
    $("progress").textContent = `${info.done} of ${info.total} done`;
    if (info.next === null) {
      s.position = null;
      $("finished").hidden = false;
      $("submit").disabled = $("skip").disabled = true;
      document.body.dataset.state = "finished";
      return;
    }
    load(info.next);
  }

  function load(position) {
    document.body.dataset.state = "loading";
    $("submit").disabled = true;
    s.position = position;
    s.mask = new Uint8Array(s.width * s.height);
    s.undo = [];
    s.label = null;
    document.querySelectorAll("#classes input").forEach((input) => { input.checked = false; });
    $("confidence").value = "0.5"; updateConfidence();
    redraw(0, 0, s.width, s.height);
    image.onload = () => {
      fit();
      s.shownAt = performance.now();
      $("submit").disabled = false;
      $("stage").dataset.position = String(position);
      document.body.dataset.state = "ready";
    };
    image.onerror = () => message("the image could not be loaded (is the server still running?)");
    image.src = `/api/image/${position}.png`;
  }

  async function submit() {
    if (s.busy || s.position === null || document.body.dataset.state !== "ready") return;
    if (s.label === null) { message("Choose the class you would assign first."); return; }
    const seconds = (performance.now() - s.shownAt) / 1000;
    s.busy = true; $("submit").disabled = true;
    document.body.dataset.state = "saving";  // no painting on an image that is being stored
    try {
      const body = JSON.stringify({ position: s.position, label: s.label, seconds,
                                    confidence: Number($("confidence").value), region: packBits(s.mask) });
      const info = await api("/api/submit", { method: "POST", headers: { "Content-Type": "application/json" }, body });
      message("");
      show(info);
    } catch (error) {
      message(`not stored: ${error.message}`);
      $("submit").disabled = false;
      document.body.dataset.state = "ready";
    } finally {
      s.busy = false;
    }
  }

  async function skip() {
    if (s.busy || s.position === null) return;
    try { show(await api(`/api/state?after=${s.position}`)); } catch (error) { message(error.message); }
  }

  // row-major, 8 pixels a byte, most significant bit first (numpy's packbits), base64
  function packBits(mask) {
    const bytes = new Uint8Array(Math.ceil(mask.length / 8));
    for (let i = 0; i < mask.length; i++) if (mask[i]) bytes[i >> 3] |= 0x80 >> (i & 7);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  // --- the mask ----------------------------------------------------------------------------------
  function redraw(x0, y0, x1, y1) {
    const data = s.overlay.data;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const i = y * s.width + x, j = 4 * i;
        data[j] = COLOR[0]; data[j + 1] = COLOR[1]; data[j + 2] = COLOR[2];
        data[j + 3] = s.mask[i] ? 255 : 0;
      }
    }
    if (x1 > x0 && y1 > y0) ctx.putImageData(s.overlay, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  function pushUndo() {
    s.undo.push(s.mask.slice());
    const depth = Math.max(MIN_UNDO, Math.min(MAX_UNDO, Math.floor(UNDO_BYTES / s.mask.length)));
    while (s.undo.length > depth) s.undo.shift();
  }

  function undo() {
    if (!s.undo.length) return;
    s.mask = s.undo.pop();
    redraw(0, 0, s.width, s.height);
  }

  function clearMask() {
    pushUndo();
    s.mask.fill(0);
    redraw(0, 0, s.width, s.height);
  }

  // every pixel whose centre is within size/2 of the segment a-b
  function stamp(ax, ay, bx, by, value) {
    const r = Number($("size").value) / 2, r2 = r * r;
    const x0 = Math.max(0, Math.floor(Math.min(ax, bx) - r)), x1 = Math.min(s.width, Math.ceil(Math.max(ax, bx) + r));
    const y0 = Math.max(0, Math.floor(Math.min(ay, by) - r)), y1 = Math.min(s.height, Math.ceil(Math.max(ay, by) + r));
    const dx = bx - ax, dy = by - ay, len2 = dx * dx + dy * dy;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        const px = x + 0.5, py = y + 0.5;
        const t = len2 > 0 ? Math.min(1, Math.max(0, ((px - ax) * dx + (py - ay) * dy) / len2)) : 0;
        const ex = ax + t * dx - px, ey = ay + t * dy - py;
        if (ex * ex + ey * ey <= r2) s.mask[y * s.width + x] = value;
      }
    }
    redraw(x0, y0, x1, y1);
  }

  // every pixel whose centre is inside the box with corners a and b
  function fillBox(ax, ay, bx, by) {
    const x0 = Math.max(0, Math.ceil(Math.min(ax, bx) - 0.5)), x1 = Math.min(s.width, Math.floor(Math.max(ax, bx) - 0.5) + 1);
    const y0 = Math.max(0, Math.ceil(Math.min(ay, by) - 0.5)), y1 = Math.min(s.height, Math.floor(Math.max(ay, by) - 0.5) + 1);
    for (let y = y0; y < y1; y++) s.mask.fill(1, y * s.width + x0, y * s.width + Math.max(x0, x1));
    redraw(x0, y0, x1, y1);
  }

  // --- view: zoom and pan ------------------------------------------------------------------------
  function applyView() {
    for (const el of [image, canvas]) {
      Object.assign(el.style, { left: `${s.tx}px`, top: `${s.ty}px`, width: `${s.width * s.scale}px`,
                                height: `${s.height * s.scale}px` });
    }
    $("zoom-value").textContent = `${Math.round(s.scale * 100)}%`;
  }

  // the whole image in view; an integer scale when it is enlarged, so image pixels stay square
  function fit() {
    let scale = 0.96 * Math.min(viewport.clientWidth / s.width, viewport.clientHeight / s.height);
    if (scale >= 1) scale = Math.floor(scale);
    s.scale = scale;
    s.tx = Math.round((viewport.clientWidth - s.width * scale) / 2);
    s.ty = Math.round((viewport.clientHeight - s.height * scale) / 2);
    applyView();
  }

  function zoomAt(cx, cy, factor) {
    const scale = Math.min(64, Math.max(0.02, s.scale * factor));
    s.tx = Math.round(cx - (cx - s.tx) * scale / s.scale);
    s.ty = Math.round(cy - (cy - s.ty) * scale / s.scale);
    s.scale = scale;
    applyView();
  }

  function zoomCentre(factor) { zoomAt(viewport.clientWidth / 2, viewport.clientHeight / 2, factor); }

  function toImage(event) {
    const r = canvas.getBoundingClientRect();
    return [(event.clientX - r.left) * s.width / r.width, (event.clientY - r.top) * s.height / r.height];
  }

  // --- pointer -----------------------------------------------------------------------------------
  viewport.addEventListener("pointerdown", (event) => {
    if (s.position === null || document.body.dataset.state !== "ready") return;
    viewport.setPointerCapture(event.pointerId);
    event.preventDefault();
    const pan = s.tool === "pan" || s.space || event.button === 1 || event.button === 2;
    if (pan) {
      s.action = { kind: "pan", x: event.clientX, y: event.clientY, tx: s.tx, ty: s.ty };
      return;
    }
    if (event.button !== 0) return;
    const [x, y] = toImage(event);
    pushUndo();
    if (s.tool === "box") {
      s.action = { kind: "box", x, y, cx: event.clientX, cy: event.clientY };
      return;
    }
    const value = s.tool === "eraser" ? 0 : 1;
    s.action = { kind: "stroke", x, y, value };
    stamp(x, y, x, y, value);
  });

  viewport.addEventListener("pointermove", (event) => {
    const a = s.action;
    if (!a) return;
    if (a.kind === "pan") {
      s.tx = a.tx + event.clientX - a.x; s.ty = a.ty + event.clientY - a.y;
      applyView();
    } else if (a.kind === "stroke") {
      const [x, y] = toImage(event);
      stamp(a.x, a.y, x, y, a.value);
      a.x = x; a.y = y;
    } else if (a.kind === "box") {
      const v = viewport.getBoundingClientRect();
      Object.assign(preview.style, {
        left: `${Math.min(a.cx, event.clientX) - v.left}px`, top: `${Math.min(a.cy, event.clientY) - v.top}px`,
        width: `${Math.abs(event.clientX - a.cx)}px`, height: `${Math.abs(event.clientY - a.cy)}px` });
      preview.hidden = false;
    }
  });

  function endAction(event) {
    const a = s.action;
    s.action = null;
    if (a && a.kind === "box") {
      preview.hidden = true;
      const [x, y] = toImage(event);
      fillBox(a.x, a.y, x, y);
    }
  }
  viewport.addEventListener("pointerup", endAction);
  viewport.addEventListener("pointercancel", () => { s.action = null; preview.hidden = true; });
  viewport.addEventListener("contextmenu", (event) => event.preventDefault());
  viewport.addEventListener("wheel", (event) => {
    event.preventDefault();
    const v = viewport.getBoundingClientRect();
    zoomAt(event.clientX - v.left, event.clientY - v.top, event.deltaY < 0 ? 1.25 : 0.8);
  }, { passive: false });
  window.addEventListener("resize", () => { if (s.position !== null) fit(); });

  // --- controls ----------------------------------------------------------------------------------
  function setTool(tool) {
    s.tool = tool;
    document.querySelectorAll("[data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
    viewport.className = tool === "pan" ? "pan" : "paint";
  }

  function updateSize() { $("size-value").textContent = $("size").value; }
  function updateConfidence() { $("confidence-value").textContent = Number($("confidence").value).toFixed(2); }
  function nudgeSize(delta) {
    const size = $("size");
    size.value = String(Math.min(Number(size.max), Math.max(1, Number(size.value) + delta)));
    updateSize();
  }

  document.querySelectorAll("[data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  $("size").addEventListener("input", updateSize);
  $("confidence").addEventListener("input", updateConfidence);
  $("opacity").addEventListener("input", () => { canvas.style.opacity = $("opacity").value; });
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearMask);
  $("zoom-in").addEventListener("click", () => zoomCentre(1.25));
  $("zoom-out").addEventListener("click", () => zoomCentre(0.8));
  $("zoom-fit").addEventListener("click", fit);
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);

  const KEYS = { b: () => setTool("brush"), e: () => setTool("eraser"), r: () => setTool("box"), h: () => setTool("pan"),
                 z: undo, "[": () => nudgeSize(-1), "]": () => nudgeSize(1), "+": () => zoomCentre(1.25),
                 "=": () => zoomCentre(1.25), "-": () => zoomCentre(0.8), 0: fit, Enter: submit };
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.metaKey) return;
    if (event.ctrlKey) {
      if (event.key === "z") { event.preventDefault(); undo(); }
      return;
    }
    if (event.key === " ") { s.space = true; viewport.className = "pan"; event.preventDefault(); return; }
    const digit = Number(event.key);
    if (Number.isInteger(digit) && digit >= 1 && digit <= 9) {
      const input = $(`class-${digit - 1}`);
      if (input) { input.checked = true; s.label = input.value; }
      return;
    }
    const action = KEYS[event.key];
    if (action) { event.preventDefault(); action(); }
  });
  document.addEventListener("keyup", (event) => {
    if (event.key === " ") { s.space = false; setTool(s.tool); }
  });

  start().catch((error) => message(error.message));
})();
