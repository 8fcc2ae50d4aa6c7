// Draws a performance report from the JSON embedded in the page; nothing is fetched.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  function colourOf(prefix) {
    let h = 0;
    for (let i = 0; i < prefix.length; i++) h = (h * 31 + prefix.charCodeAt(i)) >>> 0;
    return "hsl(" + (h % 360) + ", 62%, " + (45 + (h >> 9) % 15) + "%)";
  }
  function setup(canvas, height) {
    const width = canvas.clientWidth || 900, dpr = window.devicePixelRatio || 1;
    canvas.width = width * dpr; canvas.height = height * dpr; canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d"); ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return [ctx, width];
  }
  function legend(id, items) {
    const ul = document.getElementById(id);
    for (const [name, colour] of items) {
      const li = document.createElement("li"); li.textContent = name;
      li.style.setProperty("--c", colour); ul.appendChild(li);
    }
  }
  const t0 = data.start, t1 = Math.max(data.stop, t0 + 1e-3);
  // task stream
  const rows = [], rowOf = {};
  const workers = Object.keys(data.workers).sort();
  const lanes = {};
  for (const r of data.task_stream) if (r.thread !== null) lanes[r.worker] = Math.max(lanes[r.worker] || 0, r.thread + 1);
  for (const w of workers) { rowOf[w] = rows.length; for (let i = 0; i < Math.max(data.workers[w].nthreads, lanes[w] || 0); i++) rows.push(w); }
  for (const w in lanes) if (!(w in rowOf)) { rowOf[w] = rows.length; for (let i = 0; i < lanes[w]; i++) rows.push(w); }
  const rowH = Math.max(2, Math.min(16, Math.floor(400 / Math.max(rows.length, 1))));
  const [ctx, width] = setup(document.getElementById("report-stream"), rows.length * rowH + 20);
  const x = (t) => (t - t0) / (t1 - t0) * width;
  const seen = {};
  for (const r of data.task_stream) {
    const base = rowOf[r.worker];
    if (base === undefined) continue;
    if (r.prefix === "transfer") {
      ctx.fillStyle = "rgba(214, 39, 40, 0.75)";
      ctx.fillRect(x(r.start), base * rowH, Math.max(1, x(r.stop) - x(r.start)), Math.max(1, rowH / 3));
      continue;
    }
    ctx.fillStyle = r.status === "OK" ? colourOf(r.prefix) : "#000";
    ctx.fillRect(x(r.start), (base + r.thread) * rowH, Math.max(1, x(r.stop) - x(r.start)), Math.max(1, rowH - 1));
    seen[r.prefix] = (seen[r.prefix] || 0) + 1;
  }
  ctx.fillStyle = "#777"; ctx.font = "11px sans-serif";
  const h = rows.length * rowH + 20, span = t1 - t0;
  for (let i = 0; i <= 5; i++) ctx.fillText((span * i / 5).toFixed(2) + " s", Math.min(i * width / 5, width - 40), h - 2);
  legend("report-legend", Object.keys(seen).sort().map((p) => [p + " (" + seen[p] + ")", colourOf(p)]));
  // memory
  const [mctx, mwidth] = setup(document.getElementById("report-memory"), 220);
  let top = 1;
  for (const [, sample] of data.memory) for (const w in sample) top = Math.max(top, sample[w][1] * 1.1);
  const items = [];
  workers.forEach((w, i) => {
    const colour = "hsl(" + (i * 137 % 360) + ", 60%, 45%)";
    items.push([data.workers[w].name + " " + w, colour]);
    mctx.strokeStyle = colour; mctx.beginPath();
    let first = true;
    for (const [t, sample] of data.memory) {
      if (!(w in sample)) continue;
      const xx = (t - t0) / (t1 - t0) * mwidth, yy = 210 - sample[w][1] / top * 200;
      if (first) { mctx.moveTo(xx, yy); first = false; } else mctx.lineTo(xx, yy);
    }
    mctx.stroke();
  });
  mctx.fillStyle = "#777"; mctx.font = "11px sans-serif";
  mctx.fillText((top / 2 ** 20).toFixed(0) + " MiB", 2, 12);
  legend("report-memory-legend", items);
})();
